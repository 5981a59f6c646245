"""`warden` loads only what the invoked command needs, and still lists every command."""

from __future__ import annotations

import gc
import json
import subprocess
from pathlib import Path

from click.testing import CliRunner

from tests.interpreter import PYTHON, python_env

ROOT = str(Path(__file__).resolve().parents[1])

# Runs `warden run -- /bin/true` in-process and, as it leaves, reports which modules it loaded.
_PROBE = """
import json, os, sys
real_exit, out = os._exit, sys.argv[1]
def report(code):
    with open(out, "w") as f:
        json.dump({"code": code, "modules": sorted(sys.modules)}, f)
    real_exit(code)
os._exit = report
sys.argv = ["warden", "run", "--", "/bin/true"]
from warden.supervisor.cli import main
main()
"""


def _env(tmp: Path) -> dict[str, str]:
    env = {**python_env(ROOT), "XDG_CACHE_HOME": str(tmp / "cache"),
           "XDG_STATE_HOME": str(tmp / "state")}
    env.pop("WARDEN_NO_CACHE", None)
    return env


def test_help_lists_every_command() -> None:
    out = subprocess.run([PYTHON, "-m", "warden", "--help"], capture_output=True,
                         text=True, check=True, env=python_env(ROOT)).stdout
    listed = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == ["call", "profile", "run", "serve", "status"]


def test_warden_run_loads_neither_asyncio_nor_the_profile_tools(tmp_path: Path) -> None:
    report = tmp_path / "modules.json"
    for _ in range(2):  # the second run finds its filter in the cache
        subprocess.run([PYTHON, "-c", _PROBE, str(report)], env=_env(tmp_path),
                       check=True, cwd=tmp_path, timeout=60)
    got = json.loads(report.read_text())
    assert got["code"] == 0
    loaded = set(got["modules"])
    # The second run finds its parsed profile in the cache too: no loader, no parser.
    assert "warden.supervisor.sandbox" in loaded and "warden.profiles.cache" in loaded
    assert "warden.profiles.loader" not in loaded
    for heavy in ("asyncio", "warden.ipc", "msgspec", "warden.profiles.cli",
                  "warden.supervisor.core", "warden.supervisor.serve_cli", "pyseccomp",
                  "warden.profiles.compiler", "hashlib"):
        assert heavy not in loaded, heavy


def test_collection_is_back_on_after_a_command() -> None:
    from warden.supervisor.cli import main

    assert gc.isenabled()
    result = CliRunner().invoke(main, ["profile", "list"])
    assert result.exit_code == 0, result.output
    assert gc.isenabled()
    gc.disable()  # an embedder that keeps it off keeps it off
    try:
        CliRunner().invoke(main, ["profile", "list"])
        assert not gc.isenabled()
    finally:
        gc.enable()

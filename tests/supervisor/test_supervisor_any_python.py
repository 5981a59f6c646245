"""Any CPython embeds: a supervisor in a venv of an interpreter outside /usr (pyenv's
here) runs its workers under every start method with that same interpreter, bound
read-only from what `sys` reports, and the workers see nothing else of its prefix's
host directories."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.supervisor.util import METHODS, WORKTREE

CANDIDATES = sorted(glob.glob(os.path.expanduser("~root/.pyenv/versions/3.1[1-3]*/bin/python3")))
PYTHONS = [p for p in CANDIDATES if not os.path.realpath(p).startswith("/usr/")]

SCRIPT = r"""
import asyncio, json, sys
from warden import supervisor
from tests.supervisor.python_workers import Which

async def main() -> None:
    out = {}
    for method in sys.argv[1:]:
        async with supervisor.Supervisor(start_method=method,
                                         zygote_preload=["tests.supervisor.python_workers"]) as sup:
            w = await sup.spawn(Which, "tests.supervisor.python_workers:WhichImpl")
            out[method] = await w.remote.interpreter()
            await w.terminate()
    out["self"] = f"{sys.version} | {sys.base_prefix}"
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def wheel() -> str:
    """warden built from this checkout, as pip would install it."""
    out = tempfile.mkdtemp(prefix="warden-wheel-")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", out, WORKTREE], check=True,
                   capture_output=True)
    (found,) = glob.glob(os.path.join(out, "*.whl"))
    return found


def _venv(python: str, wheel: str) -> str:
    home = tempfile.mkdtemp(prefix="warden-venv-")
    os.chmod(home, 0o755)  # as a venv made anywhere but by mkdtemp: the worker's uid reads it
    subprocess.run([python, "-m", "venv", home], check=True)
    pip = subprocess.run([os.path.join(home, "bin", "python"), "-m", "pip", "install", "-q",
                          wheel], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return os.path.join(home, "bin", "python")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the pyenv interpreters here live "
                    "under /root, which other users cannot enter")
@pytest.mark.parametrize("python", PYTHONS, ids=lambda p: Path(p).parents[1].name)
def test_a_venv_of_a_python_outside_usr_runs_workers_under_every_start_method(
        python: str, wheel: str) -> None:
    venv_python = _venv(python, wheel)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = WORKTREE  # only for tests.supervisor.python_workers
    r = subprocess.run([venv_python, "-c", SCRIPT, *METHODS], env=env, cwd="/",
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    got = json.loads(r.stdout)
    for method in METHODS:
        # The worker runs the embedder's own interpreter, not a system python3.
        assert got[method] == got["self"], (method, got)
    assert os.path.realpath(python).startswith(got["self"].split(" | ")[1])


def test_pyenv_interpreters_were_found() -> None:
    # The machine has pyenv builds outside /usr; losing them would skip the test above
    # silently.
    if os.geteuid() != 0:
        pytest.skip("needs root: /root/.pyenv is closed to other users")
    assert PYTHONS, CANDIDATES

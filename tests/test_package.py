"""The package as users get it: one `warden` namespace, a lazy facade, a working entry point,
and a setup script that finds what an ordinary user has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import warden

ROOT = Path(__file__).resolve().parents[1]


def test_warden_help_lists_profile_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "warden", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "profile" in out and "run" in out


def test_import_warden_loads_nothing_heavy_and_every_public_name_resolves() -> None:
    # In a fresh interpreter: `import warden` must not pull asyncio, msgspec or ipc
    # (warden run pays for what the facade imports), and each public name loads on use.
    code = (
        "import json, sys, warden\n"
        "first = sorted(m for m in sys.modules if m.startswith(('warden', 'asyncio', 'msgspec')))\n"
        "missing = [n for n in warden.__all__ if getattr(warden, n, None) is None]\n"
        "print(json.dumps({'first': first, 'missing': missing, 'file': warden.__file__}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd="/")
    got = json.loads(out.stdout)
    assert got["first"] == ["warden"], got["first"]
    assert got["missing"] == []
    assert "site-packages" in got["file"] or "dist-packages" in got["file"], got["file"]


def test_subpackages_and_errors_are_reachable_from_the_facade() -> None:
    from warden.errors import EXIT_SETUP, InvalidInput, WardenError

    assert warden.ipc.Interface is warden.Interface
    assert warden.supervisor.Supervisor is warden.Supervisor
    assert issubclass(InvalidInput, WardenError) and EXIT_SETUP == 125


def test_setup_check_finds_libseccomp_without_sbin_on_path() -> None:
    # An ordinary Debian user's PATH has no /sbin, where ldconfig lives.
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "setup"), "--check"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "libseccomp2" not in r.stdout

"""A Python command line and environment that the current uid can run, for test subprocesses.

The suites run as root and again as an ordinary uid (scripts/test, setpriv).
The venv's base interpreter may sit where that uid cannot reach it (a pyenv
build under /root): then the system python3 of the same minor version runs,
with the venv's packages on PYTHONPATH (same ABI, so compiled extensions load).
"""

from __future__ import annotations

import os
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python() -> tuple[str, str]:
    exe = os.path.realpath(sys.executable)
    if os.access(exe, os.X_OK) and os.access(os.path.dirname(exe), os.X_OK):
        return sys.executable, ""
    return f"/usr/bin/python3.{sys.version_info.minor}", sysconfig.get_paths()["purelib"]


PYTHON, EXTRA_PATH = _python()


def python_env(*paths: str) -> dict[str, str]:
    """os.environ with PYTHONPATH = `paths` (default: the repository) plus the venv's packages."""
    env = dict(os.environ)
    # Keep what the runner itself was given (the ordinary-uid run puts the venv's
    # packages there when it cannot run the venv's own interpreter).
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
        p for p in (*(paths or (ROOT,)), EXTRA_PATH, *inherited) if p))
    return env

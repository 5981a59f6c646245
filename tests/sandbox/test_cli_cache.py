"""`warden run` with the filter cache: a damaged entry never changes the filter the
sandbox gets; the violation is still reported from the kernel."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
from pathlib import Path

from sandbox_util import PYTHON, supervisor_env

SETHOSTNAME = ["/usr/bin/python3", "-I", "-S", "-c", "import socket; socket.sethostname('evil')"]
ALLOW_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET|BPF_K SECCOMP_RET_ALLOW


def warden(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**supervisor_env(), "XDG_CACHE_HOME": str(cache)}
    env.pop("WARDEN_NO_CACHE", None)
    return subprocess.run([PYTHON, "-m", "supervisor", "run", "--json-status", "-", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def outcome(r: subprocess.CompletedProcess[str]) -> str:
    return str(json.loads(r.stdout)["outcome"])


def test_the_first_run_fills_the_cache_privately(tmp_path: Path) -> None:
    r = warden(tmp_path, "--", "/bin/true")
    assert (r.returncode, outcome(r)) == (0, "ok"), r.stderr
    entries = list((tmp_path / "warden" / "seccomp").iterdir())
    assert len(entries) == 1
    assert entries[0].stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "warden" / "seccomp").stat().st_mode & 0o777 == 0o700
    assert entries[0].stat().st_uid == os.geteuid()


def test_a_swapped_filter_body_is_not_used(tmp_path: Path) -> None:
    r = warden(tmp_path, "--", *SETHOSTNAME)
    assert outcome(r) == "seccomp_violation"
    (entry,) = (tmp_path / "warden" / "seccomp").iterdir()
    header, _, _body = entry.read_bytes().partition(b"\n\n")
    entry.write_bytes(header + b"\n\n" + ALLOW_ALL)  # the old digest no longer matches
    r = warden(tmp_path, "--", *SETHOSTNAME)
    assert r.returncode == 128 + signal.SIGSYS
    assert json.loads(r.stdout)["violation"]["syscall"] == "sethostname"
    assert not entry.read_bytes().endswith(ALLOW_ALL)  # rewritten from a fresh compile


def test_control_the_swapped_body_would_have_mattered(tmp_path: Path) -> None:
    """Proves the test above can fail: the same allow-all body, stored with a
    matching digest as warden itself would store it, is what the sandbox gets.
    That is the documented trust boundary: only your own uid can write there."""
    from profiles import cache

    r = warden(tmp_path, "--", *SETHOSTNAME)
    (entry,) = (tmp_path / "warden" / "seccomp").iterdir()
    cache.store(entry.parent, entry.name, ALLOW_ALL)
    r = warden(tmp_path, "--", *SETHOSTNAME)
    # No filter stopped the call: the kernel itself refused it (no CAP_SYS_ADMIN).
    assert (r.returncode, outcome(r)) == (1, "exited"), r.stdout + r.stderr
    assert "PermissionError" in r.stderr

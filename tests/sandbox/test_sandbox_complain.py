"""--complain: every call the profile would kill for is answered with EPERM and recorded,
the program runs to its end, and the status (and stderr) list them all with one allow
line; without the flag the same program is killed at its first such call."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.sandbox.sandbox_util import PYTHON, supervisor_env

# sysfs(2) is unlisted in default (a kill); socket() is reset in the profile below,
# so it falls to the default action too. Each is tried three times.
PROGRAM = """
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
for _ in range(3):
    r = libc.syscall(139, 3)
    print("sysfs", r, errno.errorcode.get(ctypes.get_errno()))
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        print("socket ok")
    except OSError as e:
        print("socket", errno.errorcode[e.errno])
print("done")
"""


def _run(tmp: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    (tmp / "tight.toml").write_text('extends = "default"\n[seccomp]\nreset = ["socket"]\n')
    status = tmp / "st.json"
    r = subprocess.run([PYTHON, "-m", "warden", "run", "-p", "./tight.toml", *flags,
                        "--json-status", str(status), "--", "/usr/bin/python3", "-c", PROGRAM],
                       capture_output=True, text=True, env=supervisor_env(), cwd=tmp,
                       timeout=60)
    return r, json.loads(status.read_text())


def test_complain_answers_eperm_lists_every_call_and_the_program_ends(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    r, st = _run(tmp_path, "--complain")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["sysfs -1 EPERM", "socket EPERM"] * 3 + ["done"]
    assert st["outcome"] == "ok" and st["violation"] is None
    got = {(c["syscall"], c["count"]) for c in st["complaints"]}
    assert got == {("sysfs", 3), ("socket", 3)}, st["complaints"]
    assert "refused (EPERM under --complain): socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC" \
        in r.stderr
    assert 'allow = ["socket", "sysfs"]' in r.stderr, r.stderr


def test_without_complain_the_first_such_call_kills(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    r, st = _run(tmp_path)
    assert r.returncode == 159, r.stderr
    assert r.stdout == ""
    assert st["outcome"] == "seccomp_violation" and st["violation"]["syscall"] == "sysfs"
    assert st["complaints"] == []


def test_a_child_cannot_grow_the_record_past_its_bound(tmp_path: Path) -> None:
    """600 distinct refused calls (unknown numbers, each a kill under default): the
    program still runs to its end, and the supervisor keeps at most MAX_COMPLAINTS."""
    from warden.supervisor.sandbox.handle import MAX_COMPLAINTS

    os.chmod(tmp_path, 0o755)
    status = tmp_path / "st.json"
    code = ("import ctypes\nlibc = ctypes.CDLL(None)\n"
            "print(sum(libc.syscall(n) == -1 for n in range(1000, 1600)))\n")
    r = subprocess.run([PYTHON, "-m", "warden", "run", "--complain", "-q", "--json-status",
                        str(status), "--", "/usr/bin/python3", "-c", code],
                       capture_output=True, text=True, env=supervisor_env(), cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "600\n"
    st = json.loads(status.read_text())
    assert len(st["complaints"]) == MAX_COMPLAINTS
    assert all(c["count"] == 1 for c in st["complaints"])

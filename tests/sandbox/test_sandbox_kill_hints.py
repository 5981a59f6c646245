"""After a seccomp kill, `warden run` names the call as a person reads it and says how
to allow it; following the advice as printed makes the program run."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.sandbox.sandbox_util import PYTHON, supervisor_env
from warden.supervisor.hints import call_text
from warden.supervisor.sandbox.status import Violation

SOCKET = ("/usr/bin/python3", "-c",
          "import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM); print('made it')")


def warden(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "warden", *args], capture_output=True, text=True,
                          env=supervisor_env(), cwd=cwd, timeout=60)


def test_a_killed_call_is_named_and_the_printed_advice_allows_it(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    # A profile of the user's own in which socket() falls to the default action (a kill).
    (tmp_path / "tight.toml").write_text(
        'extends = "default"\n[seccomp]\nreset = ["socket"]\n')
    r = warden("run", "-p", "./tight.toml", "--", *SOCKET, cwd=str(tmp_path))
    assert r.returncode == 159, r.stderr
    assert "warden: seccomp violation: socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0x0)" \
        in r.stderr, r.stderr
    # The advice: a command that starts a profile from the one in use, and the line to add.
    new = re.search(r"^warden:\s+(warden profile new \S+ --from \S+)", r.stderr, re.M)
    use = re.search(r'set allow = \["socket"\] in it and run with -p (\S+)', r.stderr)
    assert new and use, r.stderr
    made = warden(*new.group(1).split()[1:], cwd=str(tmp_path))
    assert made.returncode == 0, made.stderr
    path = tmp_path / use.group(1)
    text = path.read_text()
    assert "# allow = [" in text
    path.write_text(text.replace('# allow = ["@network-io"]', 'allow = ["socket"]', 1))
    again = warden("run", "-p", use.group(1), "--", *SOCKET, cwd=str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert again.stdout == "made it\n"


def test_arguments_are_decoded_where_their_meaning_is_known() -> None:
    def text(name: str, *args: int) -> str:
        return call_text(Violation(name, 0, "x86_64", (*args, 0, 0, 0, 0, 0, 0)[:6], 1))

    clone = text("clone", 0x10000000 | 0x20000000 | 17)
    assert sorted(clone.removeprefix("clone(").removesuffix(")").split("|")) == [
        "CLONE_NEWPID", "CLONE_NEWUSER", "SIGCHLD"], clone
    assert text("openat", 0xFFFFFF9C, 0x1000, 0o2000000 | 0o100 | 1).startswith(
        "openat(AT_FDCWD, 0x1000, O_WRONLY|")
    assert text("ioctl", 0, 0x5412) == "ioctl(0x0, TIOCSTI)"
    assert text("unshare", 0x10000000) == "unshare(CLONE_NEWUSER)"
    assert text("mount", 1, 2).startswith("mount(0x1, 0x2")  # nothing known: hex


def test_the_path_of_a_refused_path_call_is_read_before_the_kill(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    (tmp_path / "nocreat.toml").write_text(
        'extends = "default"\n[seccomp]\nreset = ["creat"]\n')
    r = warden("run", "-p", "./nocreat.toml", "--json-status", "-", "--", "/usr/bin/python3",
               "-c", "import ctypes; ctypes.CDLL(None).syscall(85, b'/tmp/planted \\xff', 0o644)",
               cwd=str(tmp_path))
    assert r.returncode == 159, r.stderr
    import json

    st = json.loads(r.stdout)
    assert st["violation"]["syscall"] == "creat"
    assert st["violation"]["path"] == "/tmp/planted \\xff"  # undecodable bytes escaped
    assert 'creat("/tmp/planted \\\\xff", 0x1a4' in r.stderr, r.stderr

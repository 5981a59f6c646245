"""`warden run` end to end, as a user runs it: exit codes, --json-status, the channel guard."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess

from click.testing import CliRunner

from tests.sandbox.sandbox_util import PYTHON, supervisor_env
from warden.errors import EXIT_SETUP
from warden.supervisor.cli import main as cli
from warden.supervisor.run_cli import run_command
from warden.supervisor.sandbox.options import SandboxOptions, described


def warden(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "warden", "run", *args], capture_output=True,
                          text=True, env=supervisor_env(), timeout=timeout)


def test_runs_a_program_and_passes_its_exit_code() -> None:
    r = warden("--", "/bin/echo", "hi")
    assert (r.returncode, r.stdout, r.stderr) == (0, "hi\n", "")
    r = warden("--json-status", "-", "--", "/bin/sh", "-c", "exit 7")
    assert r.returncode == 7
    st = json.loads(r.stdout)
    assert (st["outcome"], st["exit_code"], st["returncode"]) == ("exited", 7, 7)
    assert st["limits_mechanism"] in ("cgroup-v2", "cgroup-v1", "rlimit")


def test_seccomp_violation_exit_code_and_status(tmp_path: object) -> None:
    r = warden("--json-status", "-", "--", "/usr/bin/python3", "-I", "-S", "-c",
               "import ctypes; ctypes.CDLL(None).syscall(279, 0, 0)")
    assert r.returncode == 128 + signal.SIGSYS
    st = json.loads(r.stdout)
    assert st["outcome"] == "seccomp_violation"
    assert st["violation"]["syscall"] == "move_pages"
    assert r.stderr.startswith("warden: seccomp violation: move_pages(")


def test_timeout_not_found_and_bad_option_codes() -> None:
    r = warden("--timeout", "0.3", "--", "/bin/sleep", "30")
    assert (r.returncode, r.stderr) == (137, "warden: timeout: wall-clock timeout of 0.3s\n")
    r = warden("--", "no-such-program")
    assert r.returncode == 127
    assert "step 'exec' (ENOENT)" in r.stderr
    r = warden("--pass-fd", "3", "--", "/bin/true")
    assert r.returncode == 125
    assert "--pass-fd 3: fd 3 is already the channel; add --no-channel to free it" in r.stderr
    r = warden("--profile", "no-such-profile", "--", "/bin/true")
    assert r.returncode == 125
    assert "--profile no-such-profile" in r.stderr


def test_invalid_message_on_the_channel_kills_with_bad_message() -> None:
    r = warden("--json-status", "-", "--", "/usr/bin/python3", "-I", "-S", "-c",
               "import os, time; os.write(3, b'\\xc1 not msgpack'); time.sleep(30)")
    assert r.returncode == 137
    st = json.loads(r.stdout)
    assert st["outcome"] == "bad_message"
    assert st["reason"]


def _start_ready(seconds: int) -> subprocess.Popen[bytes]:
    """`warden run` of a program that says "ready" once it runs: the readiness
    signal the tests wait on (never a sleep)."""
    p = subprocess.Popen([PYTHON, "-m", "warden", "run", "--", "/bin/sh", "-c",
                          f"echo ready; exec /bin/sleep {seconds}"],
                         env=supervisor_env(), stdout=subprocess.PIPE)
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    return p


def test_sigterm_to_warden_is_forwarded_to_the_program() -> None:
    p = _start_ready(30)
    try:
        p.send_signal(signal.SIGTERM)
        assert p.wait() == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_killing_warden_run_kills_the_sandbox() -> None:
    p = _start_ready(60)
    try:
        init = _children(p.pid)[0]
        fd = os.pidfd_open(init)
        p.kill()
        p.wait()
        # Readable once the init has ended; a survivor would hang here until the
        # test's own timeout fails it.
        assert select.select([fd], [], [])[0] == [fd]
        os.close(fd)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def test_user_namespaces_off_is_one_clear_sentence_and_125() -> None:
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c",
         'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "sh",
         PYTHON, "-m", "warden", "run", "--", "/bin/true"],
        capture_output=True, text=True, env=supervisor_env(), timeout=60)
    assert r.returncode == 125
    assert r.stderr == ("warden: user namespaces are disabled: user.max_user_namespaces is 0; "
                        "enable them with: sysctl -w user.max_user_namespaces=15000\n")


def test_usage_errors_exit_125_naming_the_option() -> None:
    # 125 like every other failure to set up; 2 stays the program's own exit code.
    assert warden("--", "/bin/sh", "-c", "exit 2").returncode == 2
    for args, named in [(("--no-such-flag", "--", "/bin/true"), "--no-such-flag"),
                        ((), "PROGRAM"),
                        (("--memory", "lots", "--", "/bin/true"), "--memory"),
                        (("--max-procs", "0", "--", "/bin/true"), "--max-procs"),
                        (("--json-status", "-", "--json-status-fd", "1", "--", "/bin/true"),
                         "--json-status-fd")]:
        r = warden(*args)
        assert r.returncode == EXIT_SETUP, (args, r.stderr)
        assert named in r.stderr.splitlines()[-1], (args, r.stderr)
    r = CliRunner().invoke(cli, ["profile", "explain"])
    assert r.exit_code == EXIT_SETUP and "Missing argument" in r.output


def test_every_sandbox_option_is_a_run_flag_filling_its_field() -> None:
    """One vocabulary: each SandboxOptions field is the `warden run` option of the same
    name, spelled by its declared flag; given nothing, click fills in the defaults."""
    params = {p.name: p for p in run_command.params}
    for name, o in described():
        if o.kind == "api":
            assert name not in params
        else:
            assert o.flag in params[name].opts, name
    filled = run_command.make_context("run", ["--", "/bin/true"]).params
    assert (filled.pop("program"), filled.pop("quiet")) == (("/bin/true",), False)
    assert SandboxOptions(**filled) == SandboxOptions()
    filled = run_command.make_context("run", ["--no-channel", "--memory", "1M", "--ro-bind",
                                              "/a", "--ro-bind", "/b", "--", "x"]).params
    del filled["program"], filled["quiet"]
    assert SandboxOptions(**filled).changed() == {"channel": False, "memory": 1 << 20,
                                                  "ro_binds": ("/a", "/b")}

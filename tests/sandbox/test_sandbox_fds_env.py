"""Only the declared fds and variables arrive: 0-2, the channel at 3, --pass-fd, --file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.sandbox.sandbox_util import PERMISSIVE, TEST_PROFILE, collect, py, start, world_dir
from warden.supervisor.sandbox import SpecError, build_spec

# The listing's own directory fd is closed by the time the filter runs.
OPEN_FDS = ("sorted(int(f) for f in os.listdir('/proc/self/fd') "
            "if os.path.lexists('/proc/self/fd/' + f) and os.path.exists('/proc/self/fd/' + f))")
LIST_FDS = f"import os, json; print(json.dumps({OPEN_FDS}))"


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_only_stdio_and_channel_arrive() -> None:
    leak_r, leak_w = os.pipe()
    os.set_inheritable(leak_r, True)  # even an inheritable parent fd must not leak
    try:
        r = py(LIST_FDS)
    finally:
        os.close(leak_r)
        os.close(leak_w)
    assert r.json() == [0, 1, 2, 3]


def test_no_channel_means_no_fd_3() -> None:
    r = py(LIST_FDS + "\nimport os; print(os.environ.get('WARDEN_CHANNEL_FD'))", channel=False)
    lines = r.out.split("\n")
    assert lines[0] == "[0, 1, 2]"
    assert lines[1] == "None"


def test_channel_is_a_seqpacket_socket_to_the_parent() -> None:
    box, out, err = start(["/usr/bin/python3", "-I", "-S", "-c",
                           "import os, socket; s = socket.socket(fileno=int("
                           "os.environ['WARDEN_CHANNEL_FD'])); "
                           "assert s.type == socket.SOCK_SEQPACKET; s.send(b'hello'); "
                           "print(s.recv(100).decode())"])
    assert box.channel is not None
    assert box.channel.recv(100) == b"hello"
    box.channel.send(b"back")
    r = collect(box, out, err)
    assert r.out.strip() == "back"


def test_pass_fd_keeps_its_number_and_file_is_opened_by_the_parent() -> None:
    d = world_dir()
    secret = os.path.join(d, "secret.txt")
    with open(secret, "w") as f:
        f.write("only via fd")
    os.chmod(secret, 0o600)  # the sandbox's own uid could not open it
    outpath = os.path.join(d, "out.txt")
    r_fd, w_fd = os.pipe()
    passed = next(n for n in range(40, 200) if not _is_open(n))
    os.dup2(r_fd, passed)
    os.write(w_fd, b"piped")
    os.close(w_fd)
    try:
        r = py("import os, json\n"
               "files = os.environ['WARDEN_FILES'].split()\n"
               "fds = {int(x.split(':', 1)[0]): x.split(':', 1)[1] for x in files}\n"
               "inv = {v: k for k, v in fds.items()}\n"
               f"data = os.read(inv[{secret!r}], 100).decode()\n"
               f"os.write(inv[{outpath!r}], b'written')\n"
               f"print(json.dumps([os.read({passed}, 100).decode(), data, sorted(fds), "
               f"{OPEN_FDS}]))",
               pass_fds=[passed], files=[secret, outpath + ":w"])
    finally:
        os.close(passed)
        os.close(r_fd)
    piped, data, numbers, table = r.json()
    assert piped == "piped" and data == "only via fd"
    assert numbers == [passed + 1, passed + 2]
    assert table == [0, 1, 2, 3, passed, passed + 1, passed + 2]
    assert Path(outpath).read_text() == "written"


def test_environment_is_clean_but_for_named_variables() -> None:
    src = {"SECRET_TOKEN": "hunter2", "KEEPME": "kept", "LANG": "C.UTF-8", "HOME": "/root"}
    r = py("import os, json; print(json.dumps(dict(os.environ)))",
           env=["ADDED=1"], keep_env=["KEEPME"], source_env=src)
    env = r.json()
    assert "SECRET_TOKEN" not in env
    assert env["KEEPME"] == "kept" and env["ADDED"] == "1"
    assert env["HOME"] == "/tmp" and env["WARDEN_CHANNEL_FD"] == "3"
    assert set(env) <= {"PATH", "LANG", "HOME", "TERM", "KEEPME", "ADDED", "WARDEN_CHANNEL_FD",
                        "LC_CTYPE"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pass_fds": [3]}, "--pass-fd 3: fd 3 is already the channel; add --no-channel to free it"),
    ({"pass_fds": [1]}, "--pass-fd 1: fd 1 is already stdout"),
    ({"pass_fds": [999]}, "--pass-fd 999: not an open file descriptor in this process"),
    ({"env": ["NOEQUALS"]}, "--env 'NOEQUALS': expected NAME=VALUE"),
    ({"files": ["/nonexistent/x"]}, "--file /nonexistent/x: /nonexistent/x does not exist"),
    ({"ro_binds": ["/usr:/proc/x"]}, "--ro-bind /usr:/proc/x: /proc/x is reserved "
                                     "(the sandbox mounts its own /proc)"),
    ({"ro_binds": ["/usr:/bin"]}, "--ro-bind /usr:/bin: destination /bin is already used by "
                                  "profile test bind /bin"),
    ({"tmpfs": ["/tmp"]}, "--tmpfs /tmp: destination /tmp is already used by the built-in /tmp; "
                          "use --tmp-size to size it"),
    ({"memory": -1}, "--memory -1: must be greater than zero"),
    ({"source_env": {"WARDEN_OUTER_UID": "nobody"}},
     "WARDEN_OUTER_UID='nobody': not a numeric id"),
    ({"outer_uid": 0}, "--outer-uid 0: must be an unprivileged id (not 0, below 4294967295)"),
    ({"max_open_files": 3, "files": ["/etc/passwd"]},
     "--max-open-files 3: too low for the 5 fds handed to the child"),
])
def test_bad_options_fail_before_fork_naming_the_option(kwargs: dict[str, object],
                                                        message: str) -> None:
    with pytest.raises(SpecError) as e:
        build_spec(["/bin/true"], TEST_PROFILE, seccomp_filter=PERMISSIVE, **kwargs)  # type: ignore[arg-type]
    assert str(e.value) == message

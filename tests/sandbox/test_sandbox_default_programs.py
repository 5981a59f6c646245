"""Ordinary programs under `warden run -p default`, as a user runs them.

Each test runs the real program (node, ps, top, ip, sqlite3, git, gcc, tar,
CPython's multiprocessing and sockets) through the command line and checks
what it printed. The calls these programs make that `default` once killed
(pkey_alloc, set_mempolicy, capset, setgroups, sethostname, AF_INET sockets) are allowed
or answered as the kernel answers an unprivileged process; `strict` and
`python-worker` still kill every one of them, and a Python worker under
`default` still gets no inet socket (it shares a network namespace).
The suite runs as root and again as an ordinary uid (scripts/test).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import threading

import pytest

from tests.profiles.profiles_child import records, try_syscalls
from tests.sandbox.sandbox_util import PYTHON, supervisor_env
from warden.profiles import compiler, load_profile, syscalls


def warden_run(*argv: str, options: tuple[str, ...] = (),
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "warden", "run", "-p", "default", *options, "--", *argv],
                          capture_output=True, text=True, env=supervisor_env(), timeout=timeout,
                          stdin=subprocess.DEVNULL)


def sh(script: str) -> subprocess.CompletedProcess[str]:
    return warden_run("/bin/sh", "-c", script)


def ok(r: subprocess.CompletedProcess[str]) -> str:
    """The program's stdout, once it exited 0 and warden reported nothing."""
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "seccomp violation" not in r.stderr, r.stderr
    return r.stdout


def program(name: str) -> str:
    found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    # scripts/setup installs every one of these; a missing one is a broken machine.
    assert found is not None, f"{name} is not installed: run scripts/setup as root"
    return found


# ------------------------------------------------------------------ programs


def test_node_runs_with_memory_protection_keys() -> None:
    out = ok(warden_run(program("node"), "-e",
                        "console.log(process.platform, [1, 2, 3].map(x => x * 2).join(','),"
                        " require('crypto').createHash('sha256').update('x').digest('hex')"
                        ".slice(0, 8))"))
    assert out == "linux 2,4,6 2d711642\n"


def test_ps_lists_only_the_sandboxs_own_processes() -> None:
    out = ok(warden_run(program("ps"), "-e", "-o", "pid=,comm="))
    rows = [line.split(None, 1) for line in out.splitlines()]
    # pid 1 is the sandbox's init, ps is its child; nothing of the host is there
    assert [pid for pid, _ in rows] == ["1", "2"]
    assert rows[1][1] == "ps"


def test_top_prints_one_batch_frame() -> None:
    out = ok(warden_run(program("top"), "-b", "-n", "1", "-w", "200"))
    lines = out.splitlines()
    assert lines[0].startswith("top - ")
    assert any(line.split()[:2] == ["Tasks:", "2"] for line in lines), out
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["PID", "USER"])
    procs = [line.split() for line in lines[header + 1:] if line.strip()]
    assert [p[0] for p in procs] == ["1", "2"] or [p[0] for p in procs] == ["2", "1"]
    assert "top" in [p[-1] for p in procs]


def test_ip_sees_only_its_own_loopback_and_it_is_up() -> None:
    out = ok(warden_run(program("ip"), "-o", "addr"))
    assert [line.split()[1] for line in out.splitlines()] == ["lo", "lo"]
    assert "inet 127.0.0.1/8" in out and "inet6 ::1/128" in out
    out = ok(warden_run(program("ip"), "link"))
    assert out.startswith("1: lo: <LOOPBACK,UP,LOWER_UP>")
    assert "\n2: " not in out


def test_sqlite3_creates_a_database_in_tmpfs() -> None:
    sqlite3 = program("sqlite3")
    out = ok(sh(f"cd /tmp && {sqlite3} t.db 'create table t(x); insert into t values (21), (42);'"
                f" && {sqlite3} t.db 'select sum(x) * 2 from t;' && ls /tmp"))
    assert out == "126\nt.db\n"


def test_git_init_and_commit_in_tmpfs() -> None:
    git = program("git")
    out = ok(sh(f"""set -e
        export HOME=/tmp GIT_CONFIG_NOSYSTEM=1
        mkdir /tmp/r && cd /tmp/r && {git} init -q -b main
        echo hello > f && {git} add f
        {git} -c user.name=t -c user.email=t@example.invalid commit -q -m first
        {git} log --format=%s && {git} show HEAD:f && {git} status --short --branch"""))
    assert out == "first\nhello\n## main\n"


def test_gcc_compiles_and_runs_hello_world() -> None:
    gcc = program("gcc")
    source = '#include <stdio.h>\nint main(void) { printf("hello %d\\n", 6 * 7); return 0; }\n'
    out = ok(sh(f"""set -e
        cd /tmp && cat > h.c <<'END'
{source}END
        {gcc} -O1 -o h h.c && ./h"""))
    assert out == "hello 42\n"


def test_tar_round_trip() -> None:
    tar = program("tar")
    out = ok(sh(f"""set -e
        cd /tmp && mkdir -p d/sub && echo one > d/a && echo two > d/sub/b
        {tar} czf a.tgz d && rm -r d && {tar} tzf a.tgz | sort && {tar} xzf a.tgz
        cat d/a d/sub/b"""))
    assert out == "d/\nd/a\nd/sub/\nd/sub/b\none\ntwo\n"


def test_python_multiprocessing_pool() -> None:
    r = warden_run("/usr/bin/python3", "-c",
                   "import multiprocessing as m\n"
                   "with m.Pool(2) as p: print(p.map(abs, [-1, -2, -3]))")
    if r.returncode != 0 and "SemLock" in r.stderr and "FileNotFoundError" in r.stderr:
        # Semaphores live in /dev/shm, which the sandbox does not provide yet.
        pytest.xfail("needs /dev/shm")
    assert ok(r) == "[1, 2, 3]\n"


def test_setgroups_and_other_ids_get_the_kernels_answer() -> None:
    """Calls needing CAP_SETUID/CAP_SETGID fail as they do for any unprivileged process
    (EPERM, also for an id the user namespace does not map: the sandbox's guard filter
    answers those), with no kill; the process's own ids can still be set."""
    out = ok(warden_run("/usr/bin/python3", "-I", "-S", "-c", """if True:
        import errno, os
        def call(f, *a):
            try:
                f(*a)
                return "ok"
            except OSError as e:
                return errno.errorcode[e.errno]
        u, g = os.getuid(), os.getgid()
        print(call(os.setgroups, []), call(os.setgroups, [g]), call(os.setresgid, 0, 0, 0),
              call(os.setresuid, 0, 0, 0), call(os.setuid, 0), call(os.setregid, -1, -1),
              call(os.setresuid, u, u, u), call(os.setgid, g))
        """))
    assert out.split() == ["EPERM", "EPERM", "EPERM", "EPERM", "EPERM", "ok", "ok", "ok"]


def test_python_socket_server_and_client_on_its_own_loopback() -> None:
    out = ok(warden_run("/usr/bin/python3", "-I", "-S", "-c", """if True:
        import socket, threading
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"),
                             (socket.AF_INET, "localhost")):
            srv = socket.create_server((host, 0), family=family)
            port = srv.getsockname()[1]
            def serve():
                conn, _ = srv.accept()
                with conn:
                    conn.sendall(conn.recv(100).upper())
            t = threading.Thread(target=serve)
            t.start()
            with socket.create_connection((host, port), timeout=30) as c:
                c.sendall(host.encode())
                print(c.recv(100).decode())
            t.join()
            srv.close()
        """))
    assert out == "127.0.0.1\n::1\nLOCALHOST\n"


def test_the_hosts_loopback_is_not_reachable_without_share_net() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        out = ok(warden_run("/usr/bin/python3", "-I", "-S", "-c",
                            "import socket, errno\ntry:\n"
                            f"    socket.create_connection(('127.0.0.1', {port}), timeout=30)\n"
                            "    print('connected')\n"
                            "except OSError as e:\n    print(errno.errorcode[e.errno])"))
    assert out == "ECONNREFUSED\n"


def test_share_net_reaches_a_server_on_the_hosts_loopback() -> None:
    """`--share-net` alone, under `default`, gives a working outbound connection."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(60)
        port = srv.getsockname()[1]
        got: list[bytes] = []

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                got.append(conn.recv(100))
                conn.sendall(b"hello from the host")

        t = threading.Thread(target=serve)
        t.start()
        r = warden_run("/usr/bin/python3", "-I", "-S", "-c",
                       "import socket\n"
                       f"with socket.create_connection(('127.0.0.1', {port}), timeout=30) as c:\n"
                       "    c.sendall(b'hello from the sandbox'); print(c.recv(100).decode())",
                       options=("--share-net",))
        t.join(60)
    assert ok(r) == "hello from the host\n"
    assert got == [b"hello from the sandbox"]


# ------------------------------------------------------------------ still tight

NEWLY_ALLOWED = [
    ("pkey_alloc", (0, 0)),
    ("pkey_mprotect", (0, 0, 0, -1)),
    ("pkey_free", (0xFFFF,)),
    ("set_mempolicy", (0, 0, 0)),
    ("get_mempolicy", (0, 0, 0, 0, 0)),
    ("mbind", (0, 0, 0, 0, 0, 0)),
    ("capget", (0, 0)),
    ("capset", (0, 0)),
    ("setuid", (os.getuid(),)),
    ("setresgid", (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)),
    ("setfsuid", (os.getuid(),)),
    ("setgroups", (0, 0)),
    ("sethostname", (0, 0)),
    ("sched_rr_get_interval", (0, 0)),
    ("socket", (socket.AF_INET, socket.SOCK_STREAM, 0)),
    ("socket", (socket.AF_INET6, socket.SOCK_DGRAM, 0)),
    ("socket", (socket.AF_NETLINK, socket.SOCK_RAW, 0)),
]


def _nr(name: str) -> int:
    number = syscalls.number(name)
    assert number is not None, name
    return number


@pytest.mark.parametrize("profile", ["strict", "python-worker"])
@pytest.mark.parametrize(("call", "args"), NEWLY_ALLOWED,
                         ids=[f"{c}-{a[0]}" if c == "socket" else c for c, a in NEWLY_ALLOWED])
def test_strict_and_python_worker_still_kill_what_default_now_allows(
        profile: str, call: str, args: tuple[int, ...]) -> None:
    """A real child under the profile's compiled filter: the call is never executed."""
    code = compiler.compile_policy(load_profile(profile).seccomp)
    result = try_syscalls(code, [(_nr("getpid"), ()), (_nr(call), args)])
    assert result.signal == signal.SIGSYS, (call, result.status)
    assert len(records(result)) == 1


def test_default_answers_the_new_calls_without_a_kill() -> None:
    code = compiler.compile_policy(load_profile("default").seccomp)
    result = try_syscalls(code, [(_nr(c), a) for c, a in NEWLY_ALLOWED])
    assert result.exit_code == 0, result.status
    got = dict(zip([c if c != "socket" else f"socket-{a[0]}" for c, a in NEWLY_ALLOWED],
                   records(result), strict=True))
    assert got["setgroups"] == got["sethostname"] == (-1, errno.EPERM)
    assert got["sched_rr_get_interval"][1] == errno.EFAULT  # reached the kernel: NULL buffer
    assert got["pkey_free"][1] == errno.EINVAL  # reached the kernel: no such key
    assert got["capget"][1] == errno.EFAULT     # reached the kernel: NULL header
    for fam in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK):
        assert got[f"socket-{fam}"][0] >= 0


def test_a_python_worker_under_default_still_gets_no_inet_socket() -> None:
    """Fork and zygote workers share a network namespace (the supervisor's, or their
    siblings'): the filter a worker loads keeps AF_INET/AF_INET6 refused."""
    from warden.supervisor.policy import worker_filter

    code = worker_filter(load_profile("default"))
    calls = [(_nr("socket"), (socket.AF_INET, socket.SOCK_STREAM, 0)),
             (_nr("socket"), (socket.AF_INET6, socket.SOCK_DGRAM, 0)),
             (_nr("socket"), (socket.AF_UNIX, socket.SOCK_STREAM, 0))]
    got = records(try_syscalls(code, calls))
    assert got[:2] == [(-1, errno.EPERM), (-1, errno.EPERM)]
    assert got[2][0] >= 0
    net = records(try_syscalls(worker_filter(load_profile("network-client")), calls[:1]))
    assert net[0][0] >= 0  # a profile that asks for the host network keeps it

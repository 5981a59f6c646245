"""Each built-in profile in a real forked child: the denied set is refused as
declared, the allowed set works, and real programs run."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import signal
import socket
import sys

import pytest

from tests.profiles.profiles_child import exec_under, records, run_python, try_syscalls
from warden.profiles import compiler, load_profile, syscalls

CLONE_NS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000


def code_for(name: str) -> bytes:
    return compiler.compile_policy(load_profile(name).seccomp)


def nr(name: str) -> int:
    number = syscalls.number(name)
    assert number is not None, name
    return number


# Each denied call with arguments that would fail harmlessly even if the
# filter let it through (bad pointers, bad magic, bad fds).
NULL = 0
DENIED_EPERM = [
    ("mount", (NULL, NULL, NULL, 0, NULL)),
    ("umount2", (NULL, 0)),
    ("pivot_root", (NULL, NULL)),
    ("chroot", (NULL,)),
    ("unshare", (0x10000000,)),
    ("setns", (-1, 0)),
    ("keyctl", (0xFFFF, 0)),
    ("add_key", (NULL, NULL, NULL, 0, 0)),
    ("request_key", (NULL, NULL, NULL, 0)),
    ("bpf", (0xFFFF, NULL, 0)),
    ("perf_event_open", (NULL, 0, -1, -1, 0)),
    ("userfaultfd", (0xFFFF,)),
    ("io_uring_setup", (0, NULL)),
    ("io_uring_enter", (-1, 0, 0, 0, NULL)),
    ("io_uring_register", (-1, 0, NULL, 0)),
    ("ptrace", (0xFFFF, 0, 0, 0)),
    ("process_vm_readv", (0, NULL, 0, NULL, 0, 0)),
    ("process_vm_writev", (0, NULL, 0, NULL, 0, 0)),
    ("kcmp", (0, 0, 0xFFFF, 0, 0)),
    ("kexec_load", (0, 0, NULL, 0xFFFF0000)),
    ("kexec_file_load", (-1, -1, 0, NULL, 0xFFFF0000)),
    ("init_module", (NULL, 0, NULL)),
    ("finit_module", (-1, NULL, 0)),
    ("delete_module", (NULL, 0)),
    ("reboot", (0, 0, 0, NULL)),
    ("swapon", (NULL, 0)),
    ("swapoff", (NULL,)),
    ("acct", (1,)),  # a bad pointer: EFAULT if it got through
    ("quotactl", (0, NULL, 0, NULL)),
    ("syslog", (0xFFFF, NULL, 0)),
    ("iopl", (0xFFFF,)),
    ("ioperm", (0, 0, 0)),
    ("open_by_handle_at", (-1, NULL, 0)),
    ("name_to_handle_at", (-1, NULL, NULL, NULL, 0)),
    ("fanotify_init", (0xFFFFFFFF, 0)),
    ("settimeofday", (1, 1)),
    ("clock_settime", (0xFFFF, NULL)),
    ("adjtimex", (NULL,)),
    ("clone", (0x10000000 | signal.SIGCHLD, 0, 0, 0, 0)),  # CLONE_NEWUSER
    ("clone", (0x20000000 | signal.SIGCHLD, 0, 0, 0, 0)),  # CLONE_NEWPID
    ("clone", (0x00020000 | 0x40000000, 0, 0, 0, 0)),      # CLONE_NEWNS|CLONE_NEWNET
    ("ioctl", (0, 0x5412, NULL)),                          # TIOCSTI
    ("ioctl", (0, 0x1_0000_5412, NULL)),                   # TIOCSTI with the upper half set
    ("ioctl", (0, 0x541C, NULL)),                          # TIOCLINUX
    ("socket", (socket.AF_NETLINK, socket.SOCK_RAW, 15)),  # NETLINK_KOBJECT_UEVENT
    ("socket", (socket.AF_NETLINK, socket.SOCK_RAW, 9)),   # NETLINK_AUDIT
    ("socket", (socket.AF_NETLINK, socket.SOCK_RAW, 16)),  # NETLINK_GENERIC
    ("socket", (socket.AF_PACKET, socket.SOCK_RAW, 0)),
    ("socket", (socket.AF_VSOCK, socket.SOCK_STREAM, 0)),
    ("setgroups", (0, NULL)),  # the kernel's own answer without CAP_SETGID
    ("sethostname", (NULL, 0)),  # ... and without CAP_SYS_ADMIN
    ("setdomainname", (NULL, 0)),
]


@pytest.mark.parametrize("name", ["default", "network-client"])
def test_denied_set_gets_eperm_in_a_child(name: str) -> None:
    denied = DENIED_EPERM
    calls = [(nr(c), a) for c, a in denied] + [(nr("clone3"), (NULL, 0))]
    result = try_syscalls(code_for(name), calls)
    assert result.exit_code == 0, result.status
    got = records(result)
    for (call, args), (ret, err) in zip(denied, got, strict=False):
        assert (ret, errno.errorcode.get(err)) == (-1, "EPERM"), (call, args)
    assert got[-1] == (-1, errno.ENOSYS)  # clone3: glibc falls back to clone


def test_default_allows_ordinary_calls_in_a_child() -> None:
    buf = ctypes.create_string_buffer(390)  # struct utsname
    calls = [
        (nr("getppid"), ()),
        (nr("getuid"), ()),
        (nr("uname"), (ctypes.addressof(buf),)),
        (nr("socket"), (socket.AF_UNIX, socket.SOCK_STREAM, 0)),
        (nr("ioctl"), (0, 0x5413, NULL)),   # TIOCGWINSZ: reaches the kernel (ENOTTY/EFAULT)
        (nr("clone"), (0x00010000 | 0x00000100 | 0x00000800, 0, 0, 0, 0)),  # CLONE_THREAD
        (nr("sched_yield"), ()),
    ]
    result = try_syscalls(code_for("default"), calls[:4] + calls[4:5] + calls[6:])
    assert result.exit_code == 0
    got = records(result)
    assert got[0][0] == os.getpid()
    assert got[1][0] == os.getuid()
    assert got[2][0] == 0
    assert got[3][0] >= 0
    assert got[4][1] in (errno.ENOTTY, errno.EFAULT, errno.EINVAL, 0)
    assert got[5] == (0, 0)


def test_network_client_may_open_inet_sockets() -> None:
    calls = [(nr("socket"), (socket.AF_INET, socket.SOCK_STREAM, 0)),
             (nr("socket"), (socket.AF_INET6, socket.SOCK_DGRAM, 0)),
             (nr("socket"), (socket.AF_UNIX, socket.SOCK_STREAM, 0)),
             (nr("socket"), (socket.AF_PACKET, socket.SOCK_RAW, 0))]
    for name in ("default", "network-client"):
        got = records(try_syscalls(code_for(name), calls))
        assert [ret >= 0 for ret, _ in got[:3]] == [True, True, True], name
        assert got[3] == (-1, errno.EPERM), name
    assert load_profile("network-client").namespaces.net is False
    assert load_profile("default").namespaces.net is True


def test_unlisted_call_kills_the_process() -> None:
    result = try_syscalls(code_for("default"), [(nr("getppid"), ()), (nr("move_pages"), (0, 0))])
    assert result.signal == signal.SIGSYS and len(records(result)) == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/bin/sh", "-c", "echo ok; x=$(echo sub); echo $x | tr a-z A-Z"], "ok\nSUB\n"),
        (["/bin/sh", "-c", "ls / >/dev/null && printf '%s\\n' a b | sort -r | head -1"], "b\n"),
        (["/bin/sh", "-c", "cat /etc/hostname >/dev/null; seq 3 | wc -l; date +%Y >/dev/null"],
         "3\n"),
        (["/bin/sh", "-c", "echo hi > /tmp/warden-t.$$ && cat /tmp/warden-t.$$ && "
          "rm /tmp/warden-t.$$"], "hi\n"),
    ],
)
def test_shell_and_coreutils_run_under_default(argv: list[str], expected: str) -> None:
    result = exec_under(code_for("default"), argv)
    assert (result.exit_code, result.output.decode()) == (0, expected)


COREUTILS_TOUR = r"""
set -e
d=$(mktemp -d); cd "$d"
ls -l / >/dev/null; id >/dev/null; nproc >/dev/null; df / >/dev/null
seq 20000 | sort -r --parallel=2 -S 1M | tail -n 1
timeout 5 sleep 0.01; echo timeout
touch a; ln -s a b; chmod 600 a; cp a c; mv c e; stat a >/dev/null; rm e
mkfifo f; rm f
tar cf t.tar a b; tar tf t.tar | wc -l
find /usr/lib -maxdepth 1 >/dev/null
printf 'x\n' | awk '{print $1}' | sed s/x/y/ | grep y | tr y z
nice -n 5 true; echo nice
cd /; rm -rf "$d"; echo done
"""


def test_a_tour_of_coreutils_runs_under_default() -> None:
    result = exec_under(code_for("default"), ["/bin/sh", "-c", COREUTILS_TOUR])
    assert (result.exit_code, result.output.decode()) == (0, "1\ntimeout\n2\nz\nnice\ndone\n")


PY = shutil.which("python3") or sys.executable

PROGRAM = r"""
import json, hashlib, re, subprocess, threading, socket, tempfile, sqlite3, os, errno
out = {"sha": hashlib.sha256(b"x").hexdigest()[:8], "re": re.findall(r"\d", "a1b2")}
out["sub"] = subprocess.run(["/bin/echo", "child"], capture_output=True, text=True).stdout
t = threading.Thread(target=out.__setitem__, args=("thread", True)); t.start(); t.join()
with tempfile.TemporaryDirectory() as d:
    db = sqlite3.connect(os.path.join(d, "x.db")); db.execute("create table t(x)"); db.close()
    out["tmp"] = sorted(os.listdir(d))
socket.socket(socket.AF_UNIX).close()
try:
    socket.socket(socket.AF_PACKET)
except OSError as e:
    out["packet"] = errno.errorcode[e.errno]
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
out["unshare"] = (errno.errorcode[ctypes.get_errno()] if libc.unshare(0x10000000) == -1
                  else "succeeded")  # CLONE_NEWUSER (os.unshare is 3.12+)
print(json.dumps(out, sort_keys=True))
"""


def test_cpython_and_stdlib_run_under_default() -> None:
    result = exec_under(code_for("default"), [PY, "-c", PROGRAM])
    assert result.exit_code == 0, result.output.decode()
    import json

    out = json.loads(result.output)
    assert out["sha"] == "2d711642" and out["re"] == ["1", "2"]
    assert out["sub"] == "child\n" and out["thread"] is True and out["tmp"] == ["x.db"]
    assert out["packet"] == "EPERM"
    assert out["unshare"] == "EPERM"  # the filter's answer, not a kill and not a namespace


def _worker_job() -> dict[str, object]:
    import hashlib
    import json
    import threading

    out: dict[str, object] = {"json": json.dumps({"a": [1, 2]}),
                              "sha": hashlib.sha256(b"y" * 100_000).hexdigest()[:8]}
    big = [list(range(1000)) for _ in range(2000)]
    out["big"] = sum(map(len, big))
    box: list[int] = []
    t = threading.Thread(target=lambda: box.append(sum(range(1000))))
    t.start()
    t.join()
    out["thread"] = box
    for label, fn in (("open", lambda: open("/etc/hostname")),  # noqa: SIM115
                      ("listdir", lambda: os.listdir("/")),
                      ("fork", os.fork),
                      ("exec", lambda: os.execv("/bin/true", ["true"]))):
        try:
            fn()
            out[label] = "allowed"
        except OSError as e:
            out[label] = errno.errorcode[e.errno]
    try:
        import colorsys  # noqa: F401  (never imported before: needs the filesystem)
        out["import"] = "ok"
    except (ImportError, OSError) as e:
        out["import"] = "refused" if isinstance(e, ImportError | PermissionError) else repr(e)
    r, w = os.pipe()
    os.write(w, b"ping")
    out["pipe"] = os.read(r, 4).decode()
    return out


def test_cpython_code_runs_under_python_worker_after_start_up() -> None:
    assert "colorsys" not in sys.modules
    result = run_python(code_for("python-worker"), _worker_job)
    assert result.exit_code == 0, (result.status, result.output)
    out = result.json()
    assert out == {
        "json": '{"a": [1, 2]}', "sha": hashlib.sha256(b"y" * 100_000).hexdigest()[:8],
        "big": 2_000_000, "thread": [499500],
        "open": "EACCES", "listdir": "EACCES", "fork": "EPERM", "exec": "EACCES",
        "import": "refused", "pipe": "ping",
    }


def _strict_job() -> list[int]:
    data = [i * i for i in range(100_000)]
    blob = bytearray(8 << 20)  # large enough for mmap
    blob[-1] = 7
    return [sum(data) % 1000, blob[-1]]


def test_strict_allows_compute_and_io_on_given_fds() -> None:
    result = run_python(code_for("strict"), _strict_job)
    assert result.exit_code == 0, result.status
    assert result.json() == [sum(i * i for i in range(100_000)) % 1000, 7]


@pytest.mark.parametrize("call", ["open", "getppid", "socket", "clone"])
def test_strict_kills_anything_else(call: str) -> None:
    jobs = {"open": lambda: open("/etc/hostname"),  # noqa: SIM115
            "getppid": os.getppid,
            "socket": lambda: socket.socket(socket.AF_UNIX),
            "clone": os.fork}
    result = run_python(code_for("strict"), jobs[call])
    assert result.signal == signal.SIGSYS, result.status


def test_every_builtin_compiles_and_kills_by_default() -> None:
    from warden.profiles import builtin_names

    assert builtin_names() == ["default", "network-client", "python-worker", "strict"]
    for name in builtin_names():
        prof = load_profile(name)
        assert prof.description
        assert str(prof.seccomp.default_action) == "kill-process"
        assert str(prof.seccomp.bad_arch_action) == "kill-process"
        compiler.compile_policy(prof.seccomp, kill_as_notify=True)
    assert CLONE_NS == 0x7E020000  # the namespace mask Docker uses, too

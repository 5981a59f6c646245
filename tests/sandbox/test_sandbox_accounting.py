"""The sandbox pays for what it uses, never the host user or a sibling.

Attacks from real children: exhausting inotify, nesting namespaces, parking
fds in flight, holding memory outside RLIMIT_AS; and the outer ids each
sandbox gets (one of its own per live sandbox, reused after it ends).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import pytest

from tests.sandbox.sandbox_util import (
    MODE,
    PERMISSIVE,
    PY,
    PYTHON,
    TEST_PROFILE,
    WORKTREE,
    collect,
    py,
    start,
    supervisor_env,
)
from warden.supervisor.sandbox import Outcome, Sandbox, SpecError, build_spec, ids, limits, spawn
from warden.supervisor.sandbox.userns import DEFAULT_LIMITS

LIBC = ctypes.CDLL(None, use_errno=True)
# Sandboxes get ids of their own as root, or with subordinate ids granted to this user.
OWN_IDS = MODE == "root" or ids.subordinate_ids() is not None
NS_GET_OWNER_UID = 0xB704  # _IO(0xb7, 0x4): the uid that owns a user namespace


def _host_inotify_works() -> bool:
    fd = LIBC.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        return False
    os.close(fd)
    return True


class Held:
    """A sandbox running `code` with pipes for stdin and stdout: it reports one line,
    then holds what it took until its stdin closes."""

    def __init__(self, code: str, **overrides: Any) -> None:
        in_r, self._in_w = os.pipe()
        out_r, out_w = os.pipe()
        err = os.open(os.devnull, os.O_WRONLY)
        try:
            spec = build_spec([PY, "-I", "-S", "-c", code], TEST_PROFILE,
                              seccomp_filter=PERMISSIVE, stdio=(in_r, out_w, err), **overrides)
            self.box: Sandbox = spawn(spec)
        finally:
            for fd in (in_r, out_w, err):
                os.close(fd)
        self._out: IO[str] = os.fdopen(out_r)

    def line(self) -> Any:
        return json.loads(self._out.readline())

    def finish(self) -> Any:
        os.close(self._in_w)
        st = self.box.wait(60)
        if st is None:
            self.box.kill()
            st = self.box.wait()
        self._out.close()
        self.box.close_channel()
        return st


HOLD_INOTIFY = """
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
fds = []
while True:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    fds.append(fd)
print(json.dumps([len(fds), ctypes.get_errno()]), flush=True)
sys.stdin.read()
"""


def test_inotify_exhaustion_inside_does_not_reach_the_host() -> None:
    # The host's budget per user (fs.inotify.max_user_instances, 128 by default):
    # enough sandboxes at their own limit to exceed it, were they charged to us.
    # As an ordinary user the namespaces are ours, so only one sandbox's share is
    # bounded (by its namespace's limit); as root each has its own owner.
    with open("/proc/sys/fs/inotify/max_user_instances") as f:
        host_limit = int(f.read())
    per_box = DEFAULT_LIMITS["max_inotify_instances"]
    count = host_limit // per_box + 1 if MODE == "root" else 1
    held = [Held(HOLD_INOTIFY) for _ in range(count)]
    try:
        for h in held:
            assert h.line() == [per_box, errno.EMFILE]
        assert _host_inotify_works(), "the sandboxes' inotify instances were charged to the host"
    finally:
        statuses = [h.finish() for h in held]
    assert [st.outcome for st in statuses] == [Outcome.OK] * count
    assert _host_inotify_works()


def test_nested_namespaces_are_refused_by_the_kernel_whatever_the_filter() -> None:
    # PERMISSIVE allows unshare and clone: the kernel's own limit refuses them.
    r = py("import ctypes, json, os\n"
           "libc = ctypes.CDLL(None, use_errno=True)\n"
           "def try_(call, *a):\n"
           "    return 0 if call(*a) == 0 else ctypes.get_errno()\n"
           "limits = {n: int(open('/proc/sys/user/' + n).read()) for n in "
           "os.listdir('/proc/sys/user')}\n"
           "try:\n"
           "    open('/proc/sys/user/max_user_namespaces', 'w').write('100')\n"
           "    raised = 0\n"
           "except OSError as e:\n"
           "    raised = e.errno\n"
           "print(json.dumps([try_(libc.unshare, 0x10000000), raised, limits]))")
    userns_errno, raised, seen = r.json()
    assert userns_errno == errno.ENOSPC  # the kernel's count, not seccomp (EPERM)
    assert raised in (errno.EACCES, errno.EPERM)  # no CAP_SYS_RESOURCE left to raise it
    for name, value in DEFAULT_LIMITS.items():
        if name in seen:
            assert seen[name] == value, name
    assert r.status.outcome is Outcome.OK


def test_a_spec_may_allow_nested_namespaces_and_names_only_real_limits() -> None:
    r = py("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "print(libc.unshare(0x10000000), ctypes.get_errno())",
           userns_limits={"max_user_namespaces": 1})
    assert r.out.split() == ["0", "0"], r
    with pytest.raises(SpecError, match=r"^userns_limits 'max_bogus': not a limit of "
                                        r"/proc/sys/user \(one of max_cgroup_namespaces, "):
        build_spec(["/bin/true"], TEST_PROFILE, seccomp_filter=PERMISSIVE,
                   userns_limits={"max_bogus": 1})


def _status_ids(pid: int) -> tuple[set[int], set[int]]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    return set(map(int, fields["Uid"].split())), set(map(int, fields["Gid"].split()))


def _userns_owner(pid: int) -> int:
    import fcntl

    fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, NS_GET_OWNER_UID, buf)
        return int(struct.unpack("I", buf)[0])
    finally:
        os.close(fd)


SLEEP = [PY, "-I", "-S", "-c", "import sys; sys.stdin.read()"]


def test_each_live_sandbox_has_outer_ids_of_its_own_and_they_are_reused() -> None:
    if not OWN_IDS:
        pytest.skip("needs root (or subids): "
                    "as an ordinary user without /etc/subuid and /etc/subgid ranges every "
                    "sandbox keeps the user's own id (test_shared_ids_are_named_in_weakened)")
    # A range of two ids of this run's own (other suites running in parallel allocate
    # from the bottom of the default range): the two live sandboxes must get one each,
    # and a third, started after both ended, can only get one of theirs back, so
    # "reused" is proven without racing a sibling process for the lowest free id.
    own: dict[str, Any] = {}
    if MODE == "root":
        start_, count = ids.DEFAULT_RANGE
        base = start_ + count // 2 + 2 * (os.getpid() % (count // 4))
        own = {"outer_id_range": (base, 2)}
    boxes = []
    pipes = []
    try:
        for _ in range(2):
            r, w = os.pipe()
            pipes.append(w)
            boxes.append(start(SLEEP, stdin=r, **own))
            os.close(r)
        seen = []
        for box, _o, _e in boxes:
            uids, gids = _status_ids(box.pid)
            assert uids == {box.outer_ids[0]} and gids == {box.outer_ids[1]}, (uids, gids)
            assert 0 not in uids | gids and os.getuid() not in uids and os.getgid() not in gids
            if MODE == "root":
                assert base <= box.outer_ids[0] < base + 2
                # The namespace is owned by the sandbox's id, so what the kernel
                # charges to the owner is charged to it, not to root.
                assert _userns_owner(box.pid) == box.outer_ids[0]
            seen.append(box.outer_ids)
        assert seen[0] != seen[1]
    finally:
        for w in pipes:
            os.close(w)
        results = [collect(*b) for b in boxes]
    assert all(r.status.outcome is Outcome.OK for r in results)
    assert not any(w.startswith("outer ids") for r in results for w in r.status.weakened)
    # Both ended: their ids are free again, and the next sandbox takes one of them.
    r, w = os.pipe()
    box, out, err = start(SLEEP, stdin=r, **own)
    os.close(r)
    try:
        assert box.outer_ids in seen
    finally:
        os.close(w)
        collect(box, out, err)


def test_shared_ids_are_named_in_weakened() -> None:
    if MODE == "root":
        r = py("pass", outer_uid=2_000_111)
        assert any(w.startswith("outer ids (fixed at 2000111/2000111 by --outer-uid")
                   for w in r.status.weakened), r.status.weakened
    elif not OWN_IDS:
        r = py("import os; print(os.getuid())")
        assert any(w.startswith(f"outer ids (your own uid {os.getuid()}: per-user kernel")
                   for w in r.status.weakened), r.status.weakened
    else:
        r = py("pass")
        assert not any(w.startswith("outer ids") for w in r.status.weakened)


PARK_FDS = """
import json, os, socket, struct, sys
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.setblocking(False)
fd = os.open('/dev/null', os.O_RDONLY)
batch = struct.pack('250i', *[fd] * 250)
n = err = 0
while True:
    try:
        a.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, batch)])
        n += 250
    except OSError as e:
        err = e.errno
        break
print(json.dumps([n, err]), flush=True)
sys.stdin.read()
"""

PASS_FDS = """
import json, os, socket, struct, sys
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
fd = os.open('/dev/null', os.O_RDONLY)
try:
    a.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack('100i', *[fd] * 100))])
    msg, fds, _f, _a = socket.recv_fds(b, 1, 100)
    print(json.dumps([len(fds), 0]), flush=True)
except OSError as e:
    print(json.dumps([0, e.errno]), flush=True)
sys.stdin.read()
"""


def test_fds_parked_in_flight_do_not_starve_a_sibling() -> None:
    if not OWN_IDS:
        pytest.skip("needs root (or subids): "
                    "needs sandboxes with ids of their own (root, or /etc/subuid and "
                    "/etc/subgid ranges for this user): with the shared id the in-flight "
                    "count is shared by design, and the status says so")
    hog = Held(PARK_FDS)
    try:
        parked, err = hog.line()
        # The kernel refused it at its own uid's budget (its RLIMIT_NOFILE) ...
        assert err == errno.ETOOMANYREFS and parked > 1000, (parked, err)
        # ... while a sibling, and a sandbox started now, pass fds as usual.
        for _ in range(2):
            sibling = Held(PASS_FDS)
            assert sibling.line() == [100, 0]
            assert sibling.finish().outcome is Outcome.OK
        a, b = socket.socketpair()  # and so does this process, the host
        with a, b:
            socket.send_fds(a, [b"x"], [0] * 100)
            got = socket.recv_fds(b, 1, 100)[1]
            for fd in got:
                os.close(fd)
            assert len(got) == 100
    finally:
        st = hog.finish()
    assert st.outcome is Outcome.OK


# ------------------------------------------------------------------ memory without a cgroup

@pytest.fixture
def no_cgroup(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The rlimit-only path: as root by choice (WARDEN_CGROUP=none); as 4242 there is none."""
    if MODE == "root":
        monkeypatch.setenv("WARDEN_CGROUP", "none")
    if limits.available_mechanism() != "rlimit":
        pytest.skip("this uid has a usable cgroup")
    yield


def test_memory_limit_without_a_cgroup_is_refused_unless_accepted(no_cgroup: None) -> None:
    with pytest.raises(SpecError, match=r"^--memory 67108864: no usable cgroup here .* add "
                                        r"--memory-rlimit-only \(memory_rlimit_only=True\)"):
        build_spec(["/bin/true"], TEST_PROFILE, seccomp_filter=PERMISSIVE, memory=64 << 20)
    r = subprocess.run([PYTHON, "-m", "warden", "run", "--memory", "64M", "--",
                        "/bin/true"], capture_output=True, text=True, cwd=WORKTREE,
                       env=supervisor_env(), timeout=60)
    assert r.returncode == 125, r
    assert "add --memory-rlimit-only" in r.stderr, r.stderr


MEMORY_PROBE = """
import ctypes, json, os, resource
libc = ctypes.CDLL(None, use_errno=True)
fd = os.memfd_create('hold')
try:
    os.ftruncate(fd, 128 << 20)
    memfd = 0
except OSError as e:
    memfd = e.errno
v = os.statvfs('/tmp')
print(json.dumps([memfd, v.f_blocks * v.f_frsize, resource.getrlimit(resource.RLIMIT_FSIZE)[0]]))
"""


def test_accepted_rlimit_only_memory_is_named_capped_and_peak_unknown(no_cgroup: None) -> None:
    r = py(MEMORY_PROBE, memory=64 << 20, memory_rlimit_only=True, tmp_size=256 << 20)
    memfd, tmp_bytes, fsize = r.json()
    assert memfd == errno.EFBIG  # a memfd cannot grow past the limit (RLIMIT_FSIZE)
    assert tmp_bytes <= 64 << 20  # /tmp capped at the limit, though 256M was asked
    assert fsize == 64 << 20
    st = r.status
    assert (st.outcome, st.limits_mechanism, st.peak_memory_bytes) == (Outcome.OK, "rlimit",
                                                                       None)
    assert any(w.startswith("memory limit (not enforced as one: no cgroup") for w in st.weakened)


SHM_PROBE = """
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.restype = ctypes.c_int
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
def shmget(size):
    r = libc.shmget(IPC_PRIVATE, ctypes.c_size_t(size), IPC_CREAT | 0o600)
    return r if r < 0 else 0, ctypes.get_errno() if r < 0 else 0
big = shmget(128 << 20)[1]
parts = [shmget(24 << 20)[1] for _ in range(3)]
print(json.dumps([big, parts, int(open('/proc/sys/kernel/shmmax').read())]))
"""


def test_sysv_shared_memory_is_capped_in_the_sandbox_ipc_namespace(no_cgroup: None) -> None:
    if MODE != "root":
        pytest.skip("needs root: "
                    "only root can write an IPC namespace's shm sysctls when the sandbox maps "
                    "no root of its own (the status says `SysV IPC not capped`)")
    with open("/proc/sys/kernel/shmmax") as f:
        host_shmmax = f.read()
    r = py(SHM_PROBE, memory=64 << 20, memory_rlimit_only=True)
    big, parts, shmmax = r.json()
    assert big == errno.EINVAL  # one segment above kernel.shmmax
    assert parts == [0, 0, errno.ENOSPC]  # 3 x 24M: the third is past kernel.shmall
    assert shmmax == 64 << 20
    with open("/proc/sys/kernel/shmmax") as f:
        assert f.read() == host_shmmax  # the host's own namespace is untouched
    assert any("SysV IPC capped" in w for w in r.status.weakened)


def test_a_memory_limit_is_enforced_by_a_cgroup_where_there_is_one() -> None:
    if limits.available_mechanism() == "rlimit":
        pytest.skip("needs root (or a delegated cgroup): "
                    "no usable cgroup for this uid (no delegated cgroup v2 subtree, cgroup v1 "
                    "needs root)")
    r = py("pass", memory=64 << 20)
    st = r.status
    assert st.limits_mechanism in ("cgroup-v1", "cgroup-v2")
    assert st.peak_memory_bytes is not None and 0 < st.peak_memory_bytes <= 64 << 20
    assert not any(w.startswith("memory limit") for w in st.weakened)


# ------------------------------------------------------------------ subordinate ids, for real

SUBID_SCENARIO = """
import json, os, sys
sys.path[:0] = [{tests!r}, {root!r}]
from tests.sandbox.sandbox_util import PY, collect, start
from warden.supervisor.sandbox import ids
boxes = []
for _ in range(2):
    r, w = os.pipe()
    boxes.append((start([PY, '-I', '-S', '-c', 'import sys; sys.stdin.read()'], stdin=r), w))
    os.close(r)
seen = [[b.outer_ids, open(f'/proc/{{b.pid}}/status').read().split('Uid:')[1].split()[0]]
        for (b, _o, _e), _w in boxes]
out = []
for (b, o, e), w in boxes:
    os.close(w)
    out.append(collect(b, o, e).status.weakened)
sub = ids.subordinate_ids()
print(json.dumps([seen, out, sub and [sub.uid_start, sub.gid_start, sub.size]]))
"""


def test_an_ordinary_user_with_subordinate_ids_gets_ids_of_its_own(tmp_path: Any) -> None:
    if MODE != "root":
        pytest.skip("needs root to grant uid 4242 a range (in a private mount namespace)")
    if ids._find(ids.NEWUIDMAP) is None or shutil.which("unshare") is None:
        pytest.skip("newuidmap (package uidmap, installed by scripts/setup) or unshare missing")
    # /etc/passwd, /etc/subuid and /etc/subgid replaced for one process tree only:
    # a private mount namespace, so the host and other tests never see them.
    etc = tempfile.mkdtemp(prefix="warden-subid-", dir="/tmp")
    try:
        os.chmod(etc, 0o755)
        with open("/etc/passwd") as f:
            passwd = f.read()
        files = {"passwd": passwd + "wardentest:x:4242:4242::/tmp:/bin/sh\n",
                 "subuid": "4242:1900000000:1000\n", "subgid": "4242:1900000000:1000\n"}
        for name, text in files.items():
            with open(os.path.join(etc, name), "w") as f:
                f.write(text)
            os.chmod(os.path.join(etc, name), 0o644)
        script = os.path.join(etc, "scenario.py")
        with open(script, "w") as f:
            f.write(SUBID_SCENARIO.format(tests=os.path.join(WORKTREE, "tests", "sandbox"),
                                          root=WORKTREE))
        os.chmod(script, 0o644)
        # The system interpreter with the venv's packages: uid 4242 may not reach
        # the venv's own base interpreter (a pyenv build under /root).
        python = f"/usr/bin/python3.{sys.version_info.minor}"
        if not os.path.exists(python):
            python = sys.executable
        binds = "; ".join(f"mount --bind {etc}/{n} /etc/{n}" for n in files)
        r = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"{binds} && exec setpriv --reuid=4242 --regid=4242 --clear-groups "
             f"{python} {script}"],
            capture_output=True, text=True, timeout=120, cwd="/",
            env={**os.environ, "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
                 "PYTHONPATH": f"{WORKTREE}:{sysconfig.get_paths()['purelib']}"})
    finally:
        shutil.rmtree(etc)
    assert r.returncode == 0, r
    seen, weakened, sub = json.loads(r.stdout.strip().splitlines()[-1])
    assert sub == [1900000000, 1900000000, 1000]
    (ids_a, uid_a), (ids_b, uid_b) = seen
    assert ids_a != ids_b
    for got, uid in ((ids_a, uid_a), (ids_b, uid_b)):
        assert 1900000000 <= got[0] < 1900001000 and int(uid) == got[0]
    assert not any(w.startswith("outer ids") for ws in weakened for w in ws)


def test_the_id_lock_never_reaches_the_sandbox_and_failed_starts_free_their_ids() -> None:
    from pathlib import Path

    r, w = os.pipe()
    box, out, err = start(SLEEP, stdin=r)
    os.close(r)
    try:
        init = box.pid
        pids = [int(p) for p in Path(f"/proc/{init}/task/{init}/children").read_text().split()]
        if MODE == "root":
            pids.append(init)  # (an ordinary user cannot read its non-dumpable init's fds)
        for pid in pids:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except FileNotFoundError:
                    continue  # the init closing its setup fds meanwhile (a lease stays)
                assert "warden/ids" not in target and "warden-ids" not in target, (pid, target)
    finally:
        os.close(w)
        collect(box, out, err)
    # A start that fails after its ids were leased (the program is missing) frees them.
    from warden.supervisor.sandbox import SetupError

    for _ in range(3):
        with pytest.raises(SetupError):
            start(["/nonexistent/program"])
    assert not ids._held


def test_ids_come_from_the_configured_range_until_it_is_used_up() -> None:
    if MODE != "root":
        pytest.skip("needs root: "
                    "the range is root's (an ordinary user's ids come from /etc/subuid)")
    rng = "2100000000:2"
    pipes, boxes = [], []
    try:
        for _ in range(2):
            r, w = os.pipe()
            pipes.append(w)
            boxes.append(start(SLEEP, stdin=r, outer_id_range=rng))
            os.close(r)
        assert sorted(b.outer_ids[0] for b, _o, _e in boxes) == [2100000000, 2100000001]
        # A third while both live: refused with the option to widen, nothing started.
        with pytest.raises(ids.IdsUnavailable, match=r"all 2 outer ids from 2100000000 are in "
                                                     r"use by live sandboxes; widen the range "
                                                     r"with --outer-uid-range START:COUNT"):
            start(SLEEP, outer_id_range=rng)
        env = {**supervisor_env(), "WARDEN_OUTER_ID_RANGE": rng}
        cli = subprocess.run([PYTHON, "-m", "warden", "run", "--", "/bin/true"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert cli.returncode == 125 and "widen the range" in cli.stderr, cli
    finally:
        for w in pipes:
            os.close(w)
        results = [collect(*b) for b in boxes]
    assert all(r.status.outcome is Outcome.OK for r in results)
    assert py("pass", outer_id_range=rng).status.outcome is Outcome.OK  # free again

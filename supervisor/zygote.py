"""The zygote: a small, clean, pre-confined template process that forks workers fast.

Started by the Supervisor when it starts (before the embedding application
loads secrets) as a `spawn`ed sandbox of its own: a fresh interpreter in new
namespaces under `supervisor/zygote.toml` (the default profile plus the
clone flags, mounts and capset its workers' confinement needs). It imports
the worker runtime and any modules named in `preload`, then waits for fork
requests. It never
runs untrusted code and never reads anything but the supervisor's requests.

Each worker it forks is confined by warden.supervisor.confine: pid 1 of its own
user, PID, mount and IPC namespaces (it cannot see, signal or ptrace the
zygote or a sibling), its own /proc, /tmp and Landlock domain, its own
session, capabilities dropped, non-dumpable (as is the zygote), then its
profile's filter stacked on the zygote's. The zygote's filter refuses with
SECCOMP_RET_TRACE (zygote_filter), which ranks below the worker's own
user-notify: what both refuse, the worker's listener reports with its name;
what only the zygote's refuses is not executed (ENOSYS, no tracer exists).

When the supervisor dies the zygote's sandbox dies (parent-death signal on
its init) and takes every worker with it: they live in PID namespaces nested
inside the zygote's.

To answer fast, the zygote keeps `warm` workers pre-forked, confined and
warmed up (Android's unspecialized-process pool): each waits on a private
socket for its channel, which replaces that socket at fd 3 before any of
the worker's own code runs.

Protocol on the zygote's fd 3 (SOCK_SEQPACKET, supervisor <-> zygote):
  zygote -> supervisor  b"R"                             ready
  supervisor -> zygote  b"F" + worker id, fd: channel    fork a worker
  zygote -> supervisor  b"P" + pid + worker id           forked (pid in the zygote's namespace)
  zygote -> supervisor  b"E" + errno + worker id         fork failed
  supervisor -> zygote  b"K" + pid                       SIGKILL a worker not yet ready
  zygote -> supervisor  b"X" + pid + wait status         a worker ended (reaped)
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import dataclasses
import errno
import importlib
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warden.supervisor.errors import ZygoteError
from warden.supervisor.process import WorkerProcess, status_from_wait
from warden.supervisor.sandbox import Outcome, Status
from warden.supervisor.sandbox.lowlevel import close_all, recv_with_fds, wait_readable

if TYPE_CHECKING:
    from warden.profiles.model import Profile
    from warden.supervisor.confine import Isolation
    from warden.supervisor.core import Supervisor

PROFILE_PATH = str(Path(__file__).with_name("zygote.toml"))
_I = struct.Struct("=i")
_II = struct.Struct("=ii")
_MAX = 256


# ------------------------------------------------------------------ zygote side

def _serve(sock: socket.socket, warm_target: int, how: Isolation) -> None:
    from warden.supervisor.confine import fork_warm, fork_worker

    own = os.pidfd_open(os.getpid())
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sock.send(b"R")
    children: set[int] = set()
    # Pre-forked, confined, warmed-up workers waiting for a channel (Android's
    # "unspecialized app process" pool): a request then costs one fd handover.
    warm: collections.deque[tuple[int, socket.socket]] = collections.deque()
    while True:
        idle = len(warm) < warm_target
        ready = wait_readable([sock.fileno(), wake_r], 0 if idle else None)
        if not ready and idle:
            try:
                warm.append(fork_warm(own, how))
            except OSError:
                warm_target = len(warm)  # cannot pre-fork: serve cold forks only
            continue
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
            while children:
                try:
                    pid, ws = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                for entry in warm:
                    if entry[0] == pid:  # a waiting worker died unassigned: not reported
                        warm.remove(entry)
                        entry[1].close()
                        break
                else:
                    children.discard(pid)
                    sock.send(b"X" + _II.pack(pid, ws))
        if sock.fileno() in ready:
            data, fds = recv_with_fds(sock, _MAX, 1)
            if not data:
                return  # the supervisor closed: we are done
            if data[:1] == b"F" and len(fds) == 1:
                wid = data[1:]
                try:
                    assigned = _assign_warm(warm, fds[0])
                    pid = (assigned if assigned is not None
                           else fork_worker(fds[0], own, how=how))
                    children.add(pid)
                    sock.send(b"P" + _I.pack(pid) + wid)
                except OSError as e:
                    sock.send(b"E" + _I.pack(e.errno or errno.EIO) + wid)
            elif data[:1] == b"K" and len(data) == 1 + _I.size:
                pid = _I.unpack_from(data, 1)[0]
                if pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            close_all(fds)


def _assign_warm(warm: collections.deque[tuple[int, socket.socket]], channel_fd: int) \
        -> int | None:
    """Hand `channel_fd` to a waiting worker; its pid, or None if none could take it."""
    while warm:
        pid, s = warm.popleft()
        try:
            socket.send_fds(s, [b"G"], [channel_fd])
            return pid
        except OSError:
            continue  # it died meanwhile; its exit is reaped (unreported) as a warm one
        finally:
            s.close()
    return None


def main() -> None:
    """Entry point inside the zygote's sandbox: preload, then serve fork requests."""
    import warden.supervisor.worker_main  # noqa: F401
    from warden import ipc  # noqa: F401  (preloaded so forked workers start warm)
    from warden.supervisor.confine import ZYGOTE_FS_RULES, Isolation, landlock_abi
    warm = 0
    shared_tmp = False
    for arg in sys.argv[1:]:
        if arg.startswith("--warm="):
            warm = int(arg.partition("=")[2])
        elif arg == "--shared-tmp":
            shared_tmp = True
        else:
            importlib.import_module(arg)
    # Each worker: its own /proc and (unless shared) /tmp, and its own Landlock domain
    # with the file rules this sandbox would have had (the zygote's sandbox has none:
    # Landlock would refuse the workers' mounts) and the signal and socket scopes.
    how = Isolation(own_keyring=False, private_tmp=not shared_tmp, fs_rules=ZYGOTE_FS_RULES,
                    landlock_abi=landlock_abi())
    from warden.supervisor import bootstrap
    # Build msgspec's decoder for the bootstrap once, here, not in every worker.
    bootstrap.decode(bootstrap.encode(bootstrap.Bootstrap(
        worker_id="", target="", host_interface=None, profile="", seccomp_filter=b"",
        notify=False, rlimits=())))
    from warden.supervisor.sandbox import self_confine
    self_confine.set_dumpable(False)
    import gc
    gc.collect()
    gc.freeze()  # keep the collector off the shared pages: fewer copy-on-write faults per fork
    sock = socket.socket(fileno=3)
    sock.setblocking(True)
    _serve(sock, warm, how)


# ------------------------------------------------------------------ supervisor side

class ZygoteProcess(WorkerProcess):
    """A worker the zygote forked: killed through its pidfd, its status reported by the zygote."""

    def __init__(self, client: ZygoteClient, zpid: int) -> None:
        self.client = client
        self.zpid = zpid
        self.pid = -1
        self.pidfd = -1
        self.started = time.monotonic()
        self.cause: tuple[Outcome, str] | None = None
        self.status: Status | None = None
        self.notify: Any = None
        self._gone = False

    def bind(self, host_pid: int) -> None:
        """The worker's pid as we see it (from the kernel's credentials on its HELLO)."""
        self.pid = host_pid
        self.pidfd = os.pidfd_open(host_pid)

    def fds(self) -> tuple[int, ...]:
        # Its pidfd turns readable when it dies; the wait status comes from the
        # zygote's exit record, which then calls notify.
        return ((self.pidfd, *self.listener_fds()) if self.pidfd >= 0 and not self._gone
                else ())

    def service(self) -> Status | None:
        if self.status is None:
            self.check_listener()
        if (self.status is None and self.pidfd >= 0 and not self._gone
                and wait_readable([self.pidfd], 0)):
            self._gone = True
            self.check_listener()  # it is gone: what it did last is read now
            if self.cause is not None:  # we killed it: our cause is the outcome, known now
                self.status = status_from_wait(0, self.cause, self.started, self.setup_done,
                                               self.violation)
                os.close(self.pidfd)
                self.pidfd = -1
                self.close_listener()
        return self.status

    def ended(self, ws: int | None, reason: str = "") -> None:
        if self.status is not None:
            return
        self.check_listener()  # it is gone: what it did last is read now
        if ws is None:
            self.status = Status(outcome=Outcome.KILLED, exit_code=137, reason=reason,
                                 limits_mechanism="rlimit")
        else:
            self.status = status_from_wait(ws, self.cause, self.started, self.setup_done,
                                           self.violation)
        self.close_listener()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        if self.notify is not None:
            self.notify()

    def kill(self, outcome: Outcome, reason: str) -> None:
        if self.status is not None:
            return
        if self.cause is None:
            self.cause = (outcome, reason)
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        else:
            self.client.send(b"K" + _I.pack(self.zpid))

    def send_signal(self, sig: int) -> None:
        if self.pidfd >= 0 and self.status is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)


def zygote_filter(profile: Profile) -> bytes:
    """The zygote sandbox's filter: `profile`'s, with every refusal a SECCOMP_RET_TRACE.

    Workers stack their own filter, with the stack's one listener, on this one,
    and the kernel applies the most severe verdict: kill > trap > errno >
    user-notify > trace > allow. A kill or errno here would beat the worker's
    user-notify, so a call both filters refuse (ptrace, mount, socket(AF_INET))
    would end the worker unnamed, or answer EPERM to a `strict` worker. TRACE
    ranks below user-notify, so the worker's listener reports it, with its name
    and arguments, and the supervisor kills. A call only this filter refuses
    (the worker's own profile allows it) is not executed: with no tracer the
    kernel answers ENOSYS, and no worker can become a tracer (ptrace is itself
    refused here). ENOSYS answers stay as they are (clone3: glibc's fallback).
    """
    from warden.profiles import bpf
    from warden.profiles.compiler import compile_policy

    code = compile_policy(profile.seccomp, kill_as_notify=False)
    refusals = (bpf.SECCOMP_RET_KILL_PROCESS, bpf.SECCOMP_RET_KILL_THREAD)
    out = []
    for ins in bpf.decode(code):
        if ins.code == bpf.BPF_RET | bpf.BPF_K and (
                ins.k in refusals
                or (ins.k & bpf.SECCOMP_RET_ACTION_FULL == bpf.SECCOMP_RET_ERRNO
                    and ins.k & bpf.SECCOMP_RET_DATA != errno.ENOSYS)):
            ins = dataclasses.replace(ins, k=bpf.SECCOMP_RET_TRACE)
        out.append(struct.pack("=HBBI", ins.code, ins.jt, ins.jf, ins.k))
    return b"".join(out)


def unsupported(profile: Profile) -> str | None:
    """Why a worker under `profile` cannot run as a zygote worker, or None.

    The zygote's sandbox has its own network namespace, with nothing but
    loopback, and its filter refuses AF_INET/AF_INET6 sockets: a profile that
    needs the host's network (network-client) would start and then fail on
    its first connection."""
    if not profile.namespaces.net:
        return (f"profile {profile.name!r} needs the host's network, which zygote workers "
                "do not have (the zygote's sandbox has a network namespace of its own); "
                "use start_method='spawn'")
    return None


class ZygoteClient:
    """The supervisor's end of the zygote: fork requests, exit reports, the zygote's sandbox."""

    def __init__(self, loop: asyncio.AbstractEventLoop, box: Any, sock: socket.socket) -> None:
        self.loop = loop
        self.box = box
        self.sock = sock
        self.by_zpid: dict[int, ZygoteProcess] = {}
        self.pending: dict[bytes, asyncio.Future[ZygoteProcess]] = {}
        self._serial = 0
        self.dead = False
        self._box_fds: tuple[int, ...] = ()

    @classmethod
    async def start(cls, sup: Supervisor, preload: Sequence[str], warm: int = 2
                    ) -> ZygoteClient:
        from warden.supervisor.core import _sandbox_spec_for
        from warden.supervisor.policy import resolve_profile
        from warden.supervisor.sandbox import spawn as sandbox_spawn
        loop = asyncio.get_running_loop()
        zfilter = zygote_filter(resolve_profile(PROFILE_PATH))
        shared = ["--shared-tmp"] if sup.shared_tmp else []
        spec = _sandbox_spec_for(sup, ["warden.supervisor.zygote_main", f"--warm={warm}", *shared,
                                       *preload],
                                 PROFILE_PATH, "warden.supervisor.zygote", *preload,
                                 seccomp_filter=zfilter)
        # Each worker is a user, PID, mount and IPC namespace nested in the zygote's
        # sandbox, whose namespace limits are otherwise 0 (see userns.DEFAULT_LIMITS),
        # and its workers share the sandbox's inotify budget.
        nested = 2 * sup.max_workers + warm
        spec = dataclasses.replace(spec, userns_limits=(
            ("max_inotify_instances", 1024), ("max_inotify_watches", 65536),
            ("max_pid_namespaces", nested), ("max_user_namespaces", nested),
            ("max_mnt_namespaces", nested), ("max_ipc_namespaces", nested)))
        # No Landlock domain on the zygote itself: Landlock refuses mounts to a process
        # whose domain handles files, and each worker mounts its own /proc and /tmp.
        # Every worker enters a domain of its own instead (confine.ZYGOTE_FS_RULES).
        # Nor a mask on /proc/keys: a covered procfs forbids the workers' own (their
        # unmapped uids see no key in theirs).
        spec = dataclasses.replace(spec, landlock=False, mask_proc_keys=False)
        box = await loop.run_in_executor(sup._spawner, sandbox_spawn, spec)
        if box.channel is None:
            box.kill()
            raise ZygoteError("the zygote's sandbox has no channel")
        sock = box.take_channel()
        sock.setblocking(True)
        ready = await loop.run_in_executor(None, _recv_ready, sock, box)
        if not ready:
            box.kill()
            st = await loop.run_in_executor(None, box.wait)
            raise ZygoteError(f"the zygote failed to start: {st.describe() if st else '?'}")
        sock.setblocking(False)
        self = cls(loop, box, sock)
        loop.add_reader(sock.fileno(), self._on_readable)
        for fd in box.fds():
            loop.add_reader(fd, self._on_box)
        self._box_fds = box.fds()
        return self

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        if self.dead:
            return
        try:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            self.sock.sendmsg([data], anc)
        except OSError as e:
            self._died(f"the zygote's channel failed: {e}")

    async def fork(self, wid: str, child: socket.socket) -> ZygoteProcess:
        if self.dead:
            raise ZygoteError("the zygote has ended; no more zygote workers")
        self._serial += 1
        key = b"%d" % self._serial  # the request's own key: worker ids are the embedder's
        fut: asyncio.Future[ZygoteProcess] = self.loop.create_future()
        self.pending[key] = fut
        self.send(b"F" + key, [child.fileno()])
        try:
            return await fut
        finally:
            self.pending.pop(key, None)

    def _on_readable(self) -> None:
        for _ in range(64):
            try:
                data = self.sock.recv(_MAX)
            except BlockingIOError:
                return
            except OSError as e:
                self._died(f"the zygote's channel failed: {e}")
                return
            if not data:
                self._died("the zygote closed its channel")
                return
            kind = data[:1]
            if kind == b"P" and len(data) > 1 + _I.size:
                zpid = _I.unpack_from(data, 1)[0]
                fut = self.pending.get(data[1 + _I.size:])
                if fut is not None and not fut.done():
                    # Registered now, so its exit record (maybe in this same batch) finds it.
                    proc = ZygoteProcess(self, zpid)
                    self.by_zpid[zpid] = proc
                    fut.set_result(proc)
                else:  # its spawn was cancelled: it must not run
                    self.send(b"K" + _I.pack(zpid))
            elif kind == b"E" and len(data) > 1 + _I.size:
                fut = self.pending.get(data[1 + _I.size:])
                err = _I.unpack_from(data, 1)[0]
                if fut is not None and not fut.done():
                    fut.set_exception(ZygoteError(f"the zygote could not fork: "
                                                  f"{os.strerror(err)}"))
            elif kind == b"X" and len(data) == 1 + _II.size:
                zpid, ws = _II.unpack_from(data, 1)
                ended = self.by_zpid.pop(zpid, None)
                if ended is not None:  # else: a worker whose spawn was cancelled
                    ended.ended(ws)
            else:
                self.box.kill(Outcome.BAD_MESSAGE, f"zygote sent an unknown record {data[:8]!r}")
                self._died("the zygote sent an unknown record")
                return

    def _on_box(self) -> None:
        if self.box.service() is not None:
            self._died(f"the zygote ended: {self.box.status.describe()}")

    def _died(self, reason: str) -> None:
        if self.dead:
            return
        self.dead = True
        events_reason = f"{reason}; its workers ended with it"
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        for fd in self._box_fds:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(fd)
        self.box.kill(Outcome.KILLED, reason)
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ZygoteError(reason))
        for proc in list(self.by_zpid.values()):
            proc.ended(None, events_reason)
        self.by_zpid.clear()
        self.sock.close()

    async def stop(self) -> None:
        self._died("the supervisor stopped the zygote")
        await self.loop.run_in_executor(None, self.box.wait)


def _recv_ready(sock: socket.socket, box: Any) -> bool:
    while True:
        r = wait_readable([sock.fileno(), *box.fds()], 30)
        if not r:
            return False
        if sock.fileno() in r:
            try:
                return sock.recv(16) == b"R"
            except OSError:
                return False
        if box.service() is not None:
            return False


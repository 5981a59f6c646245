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

The zygote's own code is warden.supervisor.zygote_main; the messages between
the two, declared and strictly decoded, are warden.supervisor.zygote_messages.
This module is the supervisor's side: the client (`ZygoteClient`) and the
zygote's workers as the supervisor holds them (`ZygoteProcess`). A message
from the zygote that does not decode, or that makes no sense where it comes,
is the zygote misbehaving: its sandbox is killed, the reason recorded, its
workers end with it, and the next zygote spawn starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from warden.profiles.model import Profile
from warden.supervisor import zygote_messages as zm
from warden.supervisor.errors import ZygoteError
from warden.supervisor.policy import resolve_profile
from warden.supervisor.process import WorkerProcess, hasten_end, status_from_wait
from warden.supervisor.python_spec import PythonSpecs
from warden.supervisor.sandbox import Outcome, Sandbox, Status
from warden.supervisor.sandbox.lowlevel import wait_readable
from warden.supervisor.sandbox_thread import SandboxThread

PROFILE_PATH = str(Path(__file__).with_name("zygote.toml"))

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
        self.notify: Callable[[], object] | None = None
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
                hasten_end(self.pid)
        else:
            self.client.send(zm.Kill(pid=self.zpid))

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

    def __init__(self, loop: asyncio.AbstractEventLoop, box: Sandbox,
                 sock: socket.socket) -> None:
        self.loop = loop
        self.box = box
        self.sock = sock
        self.by_zpid: dict[int, ZygoteProcess] = {}
        self.pending: dict[int, asyncio.Future[ZygoteProcess]] = {}
        self._serial = 0
        self.dead = False
        self._box_fds: tuple[int, ...] = ()

    @classmethod
    async def start(cls, specs: PythonSpecs, thread: SandboxThread, preload: Sequence[str],
                    warm: int = 2, *, shared_tmp: bool = False, max_workers: int = 4096,
                    code: Sequence[str] = ()) -> ZygoteClient:
        """Start a zygote (a fresh interpreter in a sandbox of its own) and wait until it
        is ready; ZygoteError if it is not. `preload` is imported before forking;
        `code` is only bound (the modules later workers import)."""
        loop = asyncio.get_running_loop()
        zfilter = zygote_filter(resolve_profile(PROFILE_PATH))
        shared = ["--shared-tmp"] if shared_tmp else []
        spec = specs.spec(["warden.supervisor.zygote_main", f"--warm={warm}", *shared,
                           *preload],
                          PROFILE_PATH, "warden.supervisor.zygote_main", *preload, *code,
                          seccomp_filter=zfilter)
        # Each worker is a user, PID, mount and IPC namespace nested in the zygote's
        # sandbox, whose namespace limits are otherwise 0 (see userns.DEFAULT_LIMITS),
        # and its workers share the sandbox's inotify budget.
        nested = 2 * max_workers + warm
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
        box = await thread.start(spec, "the zygote's start was cancelled")
        if box.channel is None:
            box.kill()
            raise ZygoteError("the zygote's sandbox has no channel")
        sock = box.take_channel()
        sock.setblocking(True)
        why = await loop.run_in_executor(None, _recv_ready, sock, box)
        if why is not None:
            box.kill(Outcome.BAD_MESSAGE if why.startswith("it sent") else Outcome.KILLED,
                     f"the zygote failed to start: {why}")
            st = await loop.run_in_executor(None, box.wait)
            sock.close()
            raise ZygoteError(f"the zygote failed to start: {why} "
                              f"({st.describe() if st else '?'})")
        sock.setblocking(False)
        self = cls(loop, box, sock)
        loop.add_reader(sock.fileno(), self._on_readable)
        for fd in box.fds():
            loop.add_reader(fd, self._on_box)
        self._box_fds = box.fds()
        return self

    def send(self, message: zm.ToZygote, fds: Sequence[int] = ()) -> None:
        if self.dead:
            return
        try:
            data = zm.encode(message)
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.send(data)
        except OSError as e:
            self._died(f"the zygote's channel failed: {e}")

    async def fork(self, child: socket.socket) -> ZygoteProcess:
        """A new worker serving on `child` (the caller closes its copy afterwards)."""
        if self.dead:
            raise ZygoteError("the zygote has ended; no more zygote workers")
        self._serial += 1
        key = self._serial  # the request's own key: worker ids are the embedder's
        fut: asyncio.Future[ZygoteProcess] = self.loop.create_future()
        self.pending[key] = fut
        self.send(zm.Fork(request=key), [child.fileno()])
        try:
            return await fut
        finally:
            self.pending.pop(key, None)

    def _on_readable(self) -> None:
        for _ in range(64):
            try:
                data = self.sock.recv(zm.MAX_MESSAGE_BYTES)
            except BlockingIOError:
                return
            except OSError as e:
                self._died(f"the zygote's channel failed: {e}")
                return
            if not data:
                self._died("the zygote closed its channel")
                return
            try:
                self._handle(zm.from_zygote.decode(data))
            except msgspec.MsgspecError as e:
                self._misbehaved(f"the zygote sent a malformed message ({e}): {data[:32]!r}")
                return
            except Exception as e:  # never let the zygote's messages raise into the loop
                self._misbehaved(f"the zygote's message {data[:32]!r} could not be handled: "
                                 f"{type(e).__name__}: {e}")
                return
            if self.dead:
                return

    def _handle(self, message: zm.FromZygote) -> None:
        if isinstance(message, zm.Forked):
            fut = self.pending.get(message.request)
            if fut is not None and not fut.done():
                # Registered now, so its exit record (maybe in this same batch) finds it.
                proc = ZygoteProcess(self, message.pid)
                self.by_zpid[message.pid] = proc
                fut.set_result(proc)
            else:  # its spawn was cancelled: it must not run
                self.send(zm.Kill(pid=message.pid))
        elif isinstance(message, zm.ForkFailed):
            fut = self.pending.get(message.request)
            if fut is not None and not fut.done():
                fut.set_exception(ZygoteError(f"the zygote could not fork: "
                                              f"{os.strerror(message.errno)}"))
        elif isinstance(message, zm.Ended):
            ended = self.by_zpid.pop(message.pid, None)
            if ended is not None:  # else: a worker whose spawn was cancelled
                ended.ended(message.wait_status)
        else:  # Ready, once more
            self._misbehaved(f"the zygote sent {type(message).__name__} again")

    def _misbehaved(self, reason: str) -> None:
        """A message no zygote of ours sends: kill it (its workers end with it), record why."""
        self.box.kill(Outcome.BAD_MESSAGE, reason)
        self._died(reason)

    def _on_box(self) -> None:
        if self.box.service() is not None:
            status = self.box.status
            self._died(f"the zygote ended: {status.describe() if status else '?'}")

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


def _recv_ready(sock: socket.socket, box: Sandbox) -> str | None:
    """None once the zygote said Ready; else why it did not."""
    while True:
        r = wait_readable([sock.fileno(), *box.fds()], 30)
        if not r:
            return "it was not ready within 30s"
        if sock.fileno() in r:
            try:
                data = sock.recv(zm.MAX_MESSAGE_BYTES)
            except OSError as e:
                return f"its channel failed: {e}"
            if not data:
                return "it closed its channel"
            try:
                message = zm.from_zygote.decode(data)
            except msgspec.MsgspecError as e:
                return f"it sent a malformed message ({e})"
            if not isinstance(message, zm.Ready):
                return f"it sent {type(message).__name__} before Ready"
            return None
        if box.service() is not None:
            return "it ended"

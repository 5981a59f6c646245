"""The start methods: one starter each, all with the same one call.

    sock, proc = await starter.start_worker(wid, profile, boot, memory=..., timeout=...)

returns the supervisor's end of the new worker's channel, non-blocking, with
SO_PASSCRED on and the bootstrap already in it, and the process as the
supervisor holds it; the handshake (warden.supervisor.handshake) then waits for
the worker's HELLO. A starter that fails, or is cancelled, leaves nothing
running: what it started is killed and reaped.

- `SpawnStarter`: a fresh interpreter exec'ed in a new sandbox
  (`python -m warden.supervisor.worker_main`), started on the sandbox thread;
- `ForkStarter`: a fork of this process, confined by warden.supervisor.confine;
- `ZygoteStarter`: a fork of the zygote, which it starts, and replaces when it
  ends (a fresh interpreter again, never a fork of this process).

Each is given what it needs (a spec builder, the sandbox thread, the reaper,
the ids and pidfd) and nothing of the Supervisor's.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from warden.profiles.model import Profile
from warden.supervisor import bootstrap, events
from warden.supervisor.confine import fork_isolation, fork_worker, outer_ids
from warden.supervisor.errors import SpawnRefused, WorkerStartFailed
from warden.supervisor.policy import launch_filter, resolve_profile
from warden.supervisor.process import ForkedProcess, Reaper, SandboxProcess, WorkerProcess
from warden.supervisor.python_spec import PythonSpecs
from warden.supervisor.sandbox import Outcome, SetupError
from warden.supervisor.sandbox_thread import SandboxThread
from warden.supervisor.zygote import ZygoteClient


class Starter(Protocol):
    """One start method (see the module docstring)."""

    async def start_worker(self, wid: str, profile: Profile, boot: bootstrap.Bootstrap, *,
                           memory: int | None, timeout: float | None
                           ) -> tuple[socket.socket, WorkerProcess]: ...


def _channel_pair(boot: bootstrap.Bootstrap) -> tuple[socket.socket, socket.socket]:
    """Our end (bootstrap written, SO_PASSCRED on) and the worker's end of a new channel.

    The bootstrap waits in the channel before the worker exists, so a pre-forked
    worker reads it the moment it is handed its channel."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    parent.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    parent.send(bootstrap.encode(boot))
    return parent, child


async def _started(boot: bootstrap.Bootstrap,
                   start: Callable[[socket.socket], Awaitable[WorkerProcess]]
                   ) -> tuple[socket.socket, WorkerProcess]:
    """A new channel, its worker end handed to `start` (which makes the worker
    that inherits it) and closed here either way; our end, non-blocking."""
    parent, child = _channel_pair(boot)
    try:
        proc = await start(child)
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    parent.setblocking(False)
    return parent, proc


class SpawnStarter:
    """`spawn`: a fresh interpreter in a new sandbox under the launch profile."""

    def __init__(self, specs: PythonSpecs, thread: SandboxThread, reaper: Reaper,
                 launch_profile: str) -> None:
        self._specs = specs
        self._thread = thread
        self._reaper = reaper
        self._launch_profile = launch_profile

    def _launch_for(self, profile: Profile) -> Profile:
        launch = resolve_profile(self._launch_profile)
        if not profile.namespaces.net and launch.namespaces.net:
            # The worker needs the host network its launch profile withholds.
            if self._launch_profile != "default":
                raise SpawnRefused(f"profile {profile.name!r} needs the host's network, which "
                                   f"launch_profile={self._launch_profile!r} withholds; "
                                   "use a launch profile that shares it, such as "
                                   "'network-client'")
            launch = resolve_profile("network-client")
        return launch

    async def start_worker(self, wid: str, profile: Profile, boot: bootstrap.Bootstrap, *,
                           memory: int | None, timeout: float | None
                           ) -> tuple[socket.socket, WorkerProcess]:
        mem = memory if memory is not None else profile.limits.memory_bytes
        launch = self._launch_for(profile)
        # Its fds 0-2 lead to /dev/null, as a zygote or fork worker's: the supervisor's
        # own stdio (where its log records may go, and its input) is not the worker's
        # to write lines that look like ours on, nor to read.
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        try:
            # Its launch filter holds no listener (launch_filter), so the worker's
            # own filter can take the stack's one and hand it over like the others.
            spec = self._specs.spec(["warden.supervisor.worker_main"], launch,
                                    boot.target.partition(":")[0], memory=mem,
                                    timeout=timeout,
                                    # a profile's limit may be rlimit-only (and is then
                                    # named in the status); one the caller asked for not
                                    memory_rlimit_only=memory is None,
                                    seccomp_filter=launch_filter(launch, profile),
                                    stdio=(null, null, null))
            box = await self._thread.start(spec, f"worker {wid}: spawn() was cancelled")
        except SetupError as e:
            raise WorkerStartFailed(f"worker {wid}: {e}", e.status) from None
        finally:
            os.close(null)
        sock = box.take_channel()  # the worker's handle owns it from here
        proc = SandboxProcess(box)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.send(bootstrap.encode(boot))
        except BaseException:
            sock.close()
            proc.kill(Outcome.KILLED, f"worker {wid}: spawn() did not complete")
            self._reaper.reap_later(proc)
            raise
        return sock, proc


class ForkStarter:
    """`fork`: a fork of this process, confined (own namespaces, ids, /tmp, keyring)."""

    def __init__(self, own_pidfd: int, shared_tmp: bool) -> None:
        self._own_pidfd = own_pidfd
        self._shared_tmp = shared_tmp

    async def start_worker(self, wid: str, profile: Profile, boot: bootstrap.Bootstrap, *,
                           memory: int | None, timeout: float | None
                           ) -> tuple[socket.socket, WorkerProcess]:
        async def fork(child: socket.socket) -> WorkerProcess:
            # outer_ids(): the one validated source of the ids every start method uses.
            return ForkedProcess(fork_worker(child.fileno(), self._own_pidfd, outer_ids(),
                                             fork_isolation(self._shared_tmp)))

        return await _started(boot, fork)


class ZygoteStarter:
    """`zygote`: a fork of the zygote; `open()` starts the zygote, `close()` stops it."""

    def __init__(self, specs: PythonSpecs, thread: SandboxThread, preload: Sequence[str],
                 warm: int, *, shared_tmp: bool, max_workers: int) -> None:
        self._specs = specs
        self._thread = thread
        self._preload = tuple(preload)
        self._warm = warm
        self._shared_tmp = shared_tmp
        self._max_workers = max_workers
        self.client: ZygoteClient | None = None
        self._restart: asyncio.Future[ZygoteClient] | None = None
        # Worker modules the zygote binds without importing them, and what that
        # binds: a worker of a module outside it needs a zygote that has it.
        self._code: tuple[str, ...] = ()
        self._binds = specs.code_binds(self._preload)
        self._retired: list[ZygoteClient] = []  # replaced, kept while their workers run
        self._switch = asyncio.Lock()

    def _start_client(self) -> asyncio.Future[ZygoteClient]:
        return asyncio.ensure_future(ZygoteClient.start(
            self._specs, self._thread, self._preload, self._warm,
            shared_tmp=self._shared_tmp, max_workers=self._max_workers, code=self._code))

    async def _for_module(self, module: str) -> ZygoteClient:
        """A zygote whose sandbox has `module`'s files: the live one, or (the first
        time a worker's code lies elsewhere) a new one that binds it too. The old
        zygote is kept until its workers end: they live in its PID namespace."""
        if self._specs.code_binds([module]) <= self._binds:
            return await self.live()
        async with self._switch:
            if self._specs.code_binds([module]) <= self._binds:
                return await self.live()
            code = (*self._code, module)
            new = await ZygoteClient.start(
                self._specs, self._thread, self._preload, self._warm,
                shared_tmp=self._shared_tmp, max_workers=self._max_workers, code=code)
            old, self.client = self.client, new
            self._code = code
            self._binds = self._specs.code_binds((*self._preload, *code))
            events.logger.info("started a zygote that also binds %s", module)
            if old is not None:
                self._retired.append(old)
            await self._stop_idle_retired()
            return new

    async def _stop_idle_retired(self) -> None:
        for old in [z for z in self._retired if z.dead or not z.by_zpid]:
            self._retired.remove(old)
            await old.stop()

    async def open(self) -> None:
        self.client = await self._start_client()

    async def close(self) -> None:
        for old in self._retired:
            await old.stop()
        self._retired.clear()
        if self.client is not None:
            await self.client.stop()
            self.client = None

    async def live(self) -> ZygoteClient:
        """The zygote, replaced by a new one if it has ended.

        A new zygote is as clean as the first: it is a fresh interpreter
        exec'ed in a new sandbox, never a fork of this process.
        """
        assert self.client is not None, "ZygoteStarter.open() first"
        if self.client.dead:
            if self._restart is None:
                events.logger.warning("the zygote ended; starting a new one")
                self._restart = self._start_client()
            restart = self._restart
            try:
                new = await asyncio.shield(restart)
            finally:
                if self._restart is restart and restart.done():
                    self._restart = None
            if self.client.dead:
                old, self.client = self.client, new
                await old.stop()
        return self.client

    async def start_worker(self, wid: str, profile: Profile, boot: bootstrap.Bootstrap, *,
                           memory: int | None, timeout: float | None
                           ) -> tuple[socket.socket, WorkerProcess]:
        async def fork(child: socket.socket) -> WorkerProcess:
            zygote = await self._for_module(boot.target.partition(":")[0])
            return await zygote.fork(child)

        return await _started(boot, fork)

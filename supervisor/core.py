"""Supervisor: starts sandboxed workers, serves them, kills the sender of a bad message.

    async with Supervisor() as sup:
        w = await sup.spawn(Parser, "myapp.parser:ParserImpl", profile="strict")
        result = await w.remote.parse(ipc.ReadFile(fd))

Everything runs on the caller's asyncio loop; nothing a worker does can
block it (see protections.py for the list and where each one lives).

A Python worker starts in five steps, each its own piece: capacity (refuse
before the supervisor runs short: protections), bootstrap (what the worker
is told first: bootstrap), starter (one per start method: starters),
handshake (its HELLO: handshake), adopt (its handle, channel and watch:
here, shared with spawn_program). The zygote, the pools and the starters are
handed what they need (a spec builder, the sandbox thread, an event sink, a
spawner), never the Supervisor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from warden import ipc
from warden.ipc.interface import interface_of
from warden.profiles.model import Profile
from warden.supervisor import bootstrap, events, protections
from warden.supervisor.broker.offer import BrokerRules, WorkerBroker
from warden.supervisor.errors import (
    InvalidArgument,
    NotRunning,
    SpawnError,
    SpawnRefused,
    WorkerStartFailed,
)
from warden.supervisor.events import Event, EventBus
from warden.supervisor.handle import WorkerHandle
from warden.supervisor.handshake import await_ready
from warden.supervisor.policy import resolve_profile, worker_filter, worker_rlimits
from warden.supervisor.pool import Pool, RestartPolicy
from warden.supervisor.process import DeathWatch, Reaper, SandboxProcess, WorkerProcess, host_ids
from warden.supervisor.python_spec import PythonSpecs
from warden.supervisor.sandbox import Outcome, SetupError, Status, build_spec
from warden.supervisor.sandbox_thread import SandboxThread
from warden.supervisor.starters import ForkStarter, SpawnStarter, Starter, ZygoteStarter
from warden.supervisor.zygote import ZygoteClient
from warden.supervisor.zygote import unsupported as zygote_unsupported

__all__ = ["START_METHODS", "SpawnError", "Supervisor"]

START_METHODS = ("spawn", "zygote", "fork")
IfaceT = TypeVar("IfaceT", bound=ipc.Interface)


class Supervisor:
    """Runs workers on the current asyncio loop. Use `async with Supervisor() as sup:`.

    start_method: default for spawn(): "zygote" (the default: forked from a
    clean, pre-confined template started with the supervisor, so start
    Supervisor before loading secrets; fast, no parent memory), "spawn" (a
    fresh interpreter exec'ed in a new sandbox: slow, nothing of this
    process's memory) or "fork" (inherits this process's memory, knowingly).
    zygote: start the zygote even when the default method is another one.
    zygote_preload: modules the zygote imports before forking (your workers').
    zygote_warm: workers the zygote keeps pre-forked, confined and warmed up,
    waiting for a channel (0: fork each on demand).
    max_workers / fd_headroom / memory_headroom: beyond these, spawn() raises
    CapacityError instead of letting the supervisor run short.
    validate_outgoing: check our own arguments against the declaration before
    sending (a local ValueError instead of a confused worker); off for speed.
    shared_tmp: zygote and fork workers share one /tmp (the zygote sandbox's;
    the host's for fork) instead of an empty tmpfs each.
    """

    def __init__(self, *, start_method: str = "zygote", zygote: bool | None = None,
                 zygote_preload: Sequence[str] = (), zygote_warm: int = 2,
                 max_workers: int = 4096,
                 fd_headroom: int = 64, memory_headroom: int = 256 << 20,
                 launch_profile: str = "default", code_paths: Sequence[str] = (),
                 limits: ipc.Limits = ipc.DEFAULT_LIMITS,
                 validate_outgoing: bool = True, shared_tmp: bool = False) -> None:
        if start_method not in START_METHODS:
            raise InvalidArgument(f"start_method={start_method!r}: expected one of "
                             f"{', '.join(START_METHODS)}")
        self.start_method = start_method
        self._want_zygote = start_method == "zygote" if zygote is None else zygote
        self._zygote_preload = tuple(zygote_preload)
        self._zygote_warm = zygote_warm
        self.max_workers = max_workers
        self.fd_headroom = fd_headroom
        self.memory_headroom = memory_headroom
        self.launch_profile = launch_profile
        self.code_paths = tuple(code_paths)
        self.limits = limits
        self.validate_outgoing = validate_outgoing
        self.shared_tmp = shared_tmp
        self.workers: dict[str, WorkerHandle] = {}
        self.pools: dict[str, Pool[Any]] = {}
        self._ids = itertools.count(1)
        self._events = EventBus()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reaper = Reaper()
        self._deaths = DeathWatch()  # killed workers, checked before every channel read
        self._specs = PythonSpecs(self.code_paths)
        self._thread: SandboxThread | None = None
        self._own_pidfd = -1
        self._starters: dict[str, Starter] = {}
        self._zygote_starter: ZygoteStarter | None = None
        self._channel_watches: set[asyncio.Task[None]] = set()
        self._brokers: dict[WorkerHandle, WorkerBroker] = {}
        self._closing = False

    # ---------------------------------------------------------------- lifetime
    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Harden this process and, when asked, start the zygote (before secrets load)."""
        self._loop = asyncio.get_running_loop()
        protections.make_non_dumpable()
        protections.raise_fd_limit()
        self._own_pidfd = os.pidfd_open(os.getpid())
        os.set_inheritable(self._own_pidfd, False)
        thread = self._thread = SandboxThread(self._reaper)
        self._starters = {
            "spawn": SpawnStarter(self._specs, thread, self._reaper, self.launch_profile),
            "fork": ForkStarter(self._own_pidfd, self.shared_tmp),
        }
        if self._want_zygote:
            zygote = ZygoteStarter(self._specs, thread, self._zygote_preload, self._zygote_warm,
                                   shared_tmp=self.shared_tmp, max_workers=self.max_workers)
            await zygote.open()
            self._zygote_starter = self._starters["zygote"] = zygote

    async def aclose(self, grace: float = 1.0) -> None:
        """Terminate every worker (grace, then kill), stop the zygote, reap everything."""
        self._closing = True
        for p in list(self.pools.values()):
            await p.aclose(grace)
        live = [w for w in self.workers.values() if w.running]
        if live:
            await asyncio.gather(*(w.terminate(grace) for w in live), return_exceptions=True)
        await self._reaper.drain()
        for task in list(self._channel_watches):
            task.cancel()
        if self._zygote_starter is not None:
            await self._zygote_starter.close()
            self._zygote_starter = None
        self._starters = {}
        if self._thread is not None:
            self._thread.close()
            self._thread = None
        if self._own_pidfd >= 0:
            os.close(self._own_pidfd)
            self._own_pidfd = -1
        self._events.close()  # every events() iterator ends after the last event

    @property
    def _zygote(self) -> ZygoteClient | None:
        """The zygote now serving (None: no zygote, or not started)."""
        return self._zygote_starter.client if self._zygote_starter is not None else None

    # ---------------------------------------------------------------- events
    def subscribe(self, callback: Callable[[Event], object]) -> None:
        """Call `callback(event)` for every event (exceptions it raises are logged)."""
        self._events.subscribe(callback)

    def event_queue(self, maxsize: int = 10000) -> asyncio.Queue[Event]:
        """A queue that receives every event from now on (events beyond maxsize are dropped)."""
        return self._events.queue(maxsize)

    def events(self, maxsize: int = 10000) -> events.EventStream:
        """`async for event in sup.events():` every event from this call on, until the
        supervisor closes (events beyond maxsize unread are dropped)."""
        return self._events.stream(maxsize)

    def _emit(self, event: Event) -> None:
        self._events.emit(event)

    # ---------------------------------------------------------------- pools
    async def pool(self, interface: type[IfaceT], target: str | Sequence[str], *,
                   size: int = 2,
                   name: str | None = None, restart: RestartPolicy | None = None,
                   call_timeout: float | None = None, health_check: str | None = None,
                   health_interval: float = 5.0, per_worker: int = 1,
                   max_calls_per_worker: int | None = None,
                   **spawn_kwargs: Any) -> Pool[IfaceT]:
        """Start a Pool of `size` workers (see warden.supervisor.pool). `target` is a Python
        worker ("module:Impl") or a program's argv (a list); spawn_kwargs go to
        spawn() or spawn_program() (`broker=BrokerRules(...)`: each Python worker,
        replacements included, gets its own broker by those rules)."""
        pname = name or f"pool{next(self._ids)}"
        if pname in self.pools:
            raise InvalidArgument(f"pool name {pname!r} is already in use")
        p = Pool(self, self._events, pname, interface, target, size, restart or RestartPolicy(),
                 call_timeout, health_check, health_interval, spawn_kwargs, per_worker,
                 max_calls_per_worker)
        self.pools[pname] = p
        try:
            await p._start()
        except BaseException:
            await p.aclose()
            del self.pools[pname]
            raise
        return p

    def status(self) -> dict[str, Any]:
        """A snapshot for `warden status` and SIGUSR1: workers, pools, zygote."""
        zygote = self._zygote
        return {
            "pid": os.getpid(),
            "workers": sum(1 for w in self.workers.values() if w.running),
            "open_fds": protections.open_fd_count(),
            "zygote": None if zygote is None else {"pid": zygote.box.pid,
                                                   "alive": not zygote.dead},
            "pools": {n: p.status() for n, p in self.pools.items()},
        }

    # ---------------------------------------------------------------- spawning
    def _check_capacity(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._closing:
            raise NotRunning("the supervisor is not running (use `async with Supervisor()`)")
        running = sum(1 for w in self.workers.values() if w.running)
        protections.check_worker_count(running, self.max_workers)
        protections.check_fd_headroom(per_worker=4, headroom=self.fd_headroom)
        protections.check_memory_headroom(self.memory_headroom)
        return self._loop

    def _starter(self, method: str, profile: Profile) -> Starter:
        if method not in START_METHODS:
            raise InvalidArgument(f"start_method={method!r}: expected one of "
                                  f"{', '.join(START_METHODS)}")
        if method == "zygote" and (why := zygote_unsupported(profile)):
            raise SpawnRefused(why)
        starter = self._starters.get(method)
        if starter is None:
            raise SpawnRefused("start_method='zygote' needs Supervisor(zygote=True) "
                               "or Supervisor(start_method='zygote')")
        return starter

    def _bootstrap(self, wid: str, target: str, profile: Profile, host: ipc.Interface | None,
                   limits: ipc.Limits, broker: bool = False) -> bootstrap.Bootstrap:
        host_iface = None
        if host is not None:
            iface = interface_of(host)
            host_iface = f"{iface.__module__}:{iface.__qualname__}"
        return bootstrap.Bootstrap(
            worker_id=wid, target=target, host_interface=host_iface, profile=profile.name,
            seccomp_filter=worker_filter(profile, notify=True),
            notify=True, rlimits=worker_rlimits(profile), max_frame_bytes=limits.max_frame_bytes,
            broker=broker)

    async def spawn(self, interface: type[ipc.Interface], target: str, *,
                    profile: str | Profile = "strict", start_method: str | None = None,
                    host: ipc.Interface | None = None, granted: Iterable[str] = (),
                    worker_id: str | None = None, limits: ipc.Limits | None = None,
                    ready_timeout: float = 30.0, memory: int | None = None,
                    timeout: float | None = None,
                    broker: BrokerRules | None = None) -> WorkerHandle:
        """Start a Python worker serving `interface` with `target` ("module:Impl").

        profile: the seccomp/limits profile the worker loads on itself before
        serving (default "strict"). host: an implementation of an interface the
        worker may call back (its handlers get the trusted ctx: worker id,
        profile, pid); granted: the permissions this worker holds on it.
        broker: the worker's explicit broker (warden.supervisor.broker.offer):
        files and connections the supervisor opens for it by these rules, which
        the worker reaches through `warden.supervisor.worker.broker()`.
        Raises SpawnError (with .status) if the worker ends before it is ready,
        CapacityError when the supervisor keeps its headroom.
        """
        loop = self._check_capacity()
        method = start_method or self.start_method
        prof = resolve_profile(profile)
        starter = self._starter(method, prof)
        wid = worker_id or f"w{next(self._ids)}"
        if wid in self.workers and self.workers[wid].running:
            raise InvalidArgument(f"worker id {wid!r} is already in use")
        limits = limits or self.limits
        offer = self._broker_for(wid, broker)
        try:
            boot = self._bootstrap(wid, target, prof, host, limits, broker=offer is not None)
            sock, proc = await starter.start_worker(wid, prof, boot, memory=memory,
                                                    timeout=timeout)
            if offer is not None:  # no await since the bootstrap: it is queued right behind
                offer.send_endpoint(sock)
            pid = await await_ready(sock, proc, ready_timeout, wid, sink=self._events,
                                    reaper=self._reaper)
        except BaseException:
            if offer is not None:
                offer.close()
            raise
        handle = self._adopt(loop, wid, proc, pid, sock, method, prof.name, interface, host,
                             granted, limits)
        if offer is not None:
            self._serve_broker(handle, offer)
        return handle

    # ---------------------------------------------------------------- the broker
    def _broker_for(self, wid: str, rules: BrokerRules | None) -> WorkerBroker | None:
        """The worker's broker, its policy built now: a bad rule fails the spawn."""
        if rules is None:
            return None
        if not isinstance(rules, BrokerRules):
            raise InvalidArgument(f"broker={rules!r}: expected BrokerRules "
                                  "(warden.supervisor.broker.offer)")
        try:
            return WorkerBroker(wid, rules, self._emit)
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"worker {wid}: broker: {e}") from None

    def _serve_broker(self, handle: WorkerHandle, offer: WorkerBroker) -> None:
        """Our end of the worker's broker channel, bound to Broker alone. A bad frame on
        it is the worker's bad message (killed, recorded); it ends with the worker."""
        if not handle.running:
            offer.close()
            return
        self._brokers[handle] = offer

        def on_bad_message(bad: ipc.BadMessage) -> None:
            handle._kill_for(Outcome.BAD_MESSAGE, f"on its broker channel: {bad}")
            self._emit(events.BadMessageEvent(handle.id, handle.pid, "warden.Broker",
                                              bad.method, bad.field, bad.reason))

        def on_cut_off(cut: ipc.CutOff) -> None:
            handle._kill_for(Outcome.KILLED, f"on its broker channel: {cut}")

        offer.attach(handle.pid, {"worker_id": handle.id, "profile": handle.profile,
                                  "start_method": handle.start_method},
                     on_bad_message, on_cut_off)

    def _end_broker(self, handle: WorkerHandle) -> None:
        offer = self._brokers.pop(handle, None)
        if offer is not None:
            offer.close()

    async def spawn_program(self, argv: Sequence[str], *,
                            interface: type[ipc.Interface] | None = None,
                            profile: str | Profile = "default", host: ipc.Interface | None = None,
                            granted: Iterable[str] = (), worker_id: str | None = None,
                            limits: ipc.Limits | None = None,
                            broker: BrokerRules | None = None, **sandbox_options: Any
                            ) -> WorkerHandle:
        """Start any program (the `warden run` machinery) that speaks ipc on fd 3.

        interface: what the program serves (handle.remote), or None. The
        profile's filter is loaded by the sandbox right before exec (its kill
        actions reported through user-notify, with the call's name and
        arguments). sandbox_options are build_spec keywords (ro_binds=,
        memory=, timeout=, files=, ...).
        """
        if broker is not None:
            raise InvalidArgument("broker= serves Python workers (spawn); a program gets "
                                  "its files and connections from the transparent broker "
                                  "(warden run --broker-read/--broker-write/--broker-connect)")
        loop = self._check_capacity()
        prof = resolve_profile(profile)
        wid = worker_id or f"w{next(self._ids)}"
        spec = build_spec(list(argv), prof, **sandbox_options)
        assert self._thread is not None
        try:
            box = await self._thread.start(spec, f"worker {wid}: spawn() was cancelled")
        except SetupError as e:
            raise WorkerStartFailed(f"worker {wid}: {e}", e.status) from None
        proc = SandboxProcess(box)
        proc.setup_done = True
        sock = box.take_channel() if box.channel is not None else None
        # A channel nobody speaks ipc on (no interface either way) is the program's to
        # close: only a channel that carries calls binds the program's life to it.
        has_channel = sock is not None and (interface is not None or host is not None)
        if sock is None:
            sock, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            other.close()  # no channel: a closed one, so handle.channel always exists
        return self._adopt(loop, wid, proc, box.pid, sock, "program", prof.name, interface,
                           host, granted, limits or self.limits, has_channel=has_channel)

    def _adopt(self, loop: asyncio.AbstractEventLoop, wid: str, proc: WorkerProcess, pid: int,
               sock: socket.socket, method: str, profile: str,
               interface: type[ipc.Interface] | None, host: ipc.Interface | None,
               granted: Iterable[str], limits: ipc.Limits, *, has_channel: bool = True
               ) -> WorkerHandle:
        """The started worker becomes ours: its handle, its channel, its watch, Started."""
        handle: WorkerHandle = WorkerHandle._create(wid, proc, method, profile, loop, interface)
        handle.pid = pid  # the worker itself (for `spawn`, the sandbox's init is proc.pid)
        handle._has_channel = has_channel
        self.workers[wid] = handle

        def on_bad_message(bad: ipc.BadMessage) -> None:
            self._on_bad_message(handle, bad)

        handle._on_bad_message = on_bad_message
        handle._on_killed = lambda: self._deaths.add(  # type: ignore[method-assign]
            handle, proc.death_fd(), lambda: self._service(handle))
        # ctx.uid/gid: the worker's own ids as the kernel shows them here (its outer ids),
        # never SO_PEERCRED's, which on a socketpair names the supervisor; -1 when the
        # worker ended before they could be read.
        uid, gid = host_ids(pid, proc.death_fd()) or (-1, -1)
        handle.channel = ipc.attach(
            sock, peer_id=wid, serve=host, remote=interface, granted=granted,
            extra={"worker_id": wid, "profile": profile, "start_method": method},
            pid=pid, uid=uid, gid=gid, limits=limits, on_bad_message=on_bad_message,
            on_cut_off=lambda cut: self._on_cut_off(handle, cut),
            validate_outgoing=self.validate_outgoing, before_io=self._deaths.check)
        self._watch(handle)
        self._emit(events.Started(wid, pid, method, profile))
        return handle

    # ---------------------------------------------------------------- watching
    def _watch(self, handle: WorkerHandle) -> None:
        loop = self._loop
        assert loop is not None
        proc = handle._process
        proc.notify = lambda: self._service(handle)
        fds = proc.fds()
        handle._watched = fds
        for fd in fds:
            loop.add_reader(fd, self._service, handle)
        if handle._has_channel:
            task = loop.create_task(self._watch_channel(handle))
            self._channel_watches.add(task)
            task.add_done_callback(self._channel_watches.discard)
        self._service(handle)

    async def _watch_channel(self, handle: WorkerHandle) -> None:
        """Trusted-side rule 6: a channel that ends while its process lives is misbehaviour.

        The worker closed fd 3 or exec'ed another program (fd 3 is close-on-exec)
        and carries on: no call can reach it any more, so it is killed at once,
        its outcome saying the channel went first; its pool replaces it. A worker
        that exits or crashes closes its channel on the way out (its end follows
        through the pidfd, with its own outcome), so the kernel is asked first.
        """
        reason = await handle.channel.wait_closed()
        if reason is not None or handle._hung_up or not handle.running:
            return  # a bad message or cut-off (its hook killed it), or our own close
        self._service(handle)
        if not handle.running or handle._process.ending(handle.pid):
            return
        why = ("the worker closed its channel while its process kept running "
               "(the channel ended first)")
        handle._kill_for(Outcome.BAD_MESSAGE, why)
        self._emit(events.BadMessageEvent(handle.id, handle.pid, self._iface_name(handle),
                                          None, None, why))
        self._service(handle)

    def _service(self, handle: WorkerHandle) -> None:
        try:
            status = handle._process.service()
        except Exception:  # never let one worker's bookkeeping raise into the loop
            events.logger.exception("servicing worker %s", handle.id)
            return
        if status is None:
            # the listener may have closed (fd set changes): re-register
            now = handle._process.fds()
            if now != handle._watched:
                for fd in handle._watched:
                    if fd not in now:
                        self._loop.remove_reader(fd)  # type: ignore[union-attr]
                handle._watched = now
            return
        self._finish(handle, status)

    def _finish(self, handle: WorkerHandle, status: Status) -> None:
        self._deaths.discard(handle)
        if handle._done.done():
            return
        loop = self._loop
        assert loop is not None
        for fd in handle._watched:
            loop.remove_reader(fd)
        handle._watched = ()
        if status.outcome is Outcome.SECCOMP_VIOLATION:
            v = status.violation
            self._emit(events.SeccompViolation(handle.id, handle.pid,
                                               v.syscall if v else None, status.reason))
        elif (status.outcome is Outcome.OK and handle._has_channel
              and not handle._asked_to_end):
            # A worker serves until we close its channel; ending by itself, above
            # all during a call, is a failure (a pool under "on-failure" replaces it).
            when = "during a call" if handle._in_call else "on its own"
            status = dataclasses.replace(
                status, outcome=Outcome.EXITED,
                reason=f"the worker exited with code 0 {when}; the supervisor had not "
                       "asked it to end")
        handle._hang_up()
        self._end_broker(handle)
        if self.workers.get(handle.id) is handle:
            del self.workers[handle.id]  # ended workers are not kept: a soak must not grow
        handle._ended(status)
        self._emit(events.Exited(handle.id, handle.pid, status))

    @staticmethod
    def _iface_name(handle: WorkerHandle) -> str | None:
        return handle.interface.__ipc_name__ if handle.interface is not None else None

    def _on_bad_message(self, handle: WorkerHandle, bad: ipc.BadMessage) -> None:
        handle._kill_for(Outcome.BAD_MESSAGE, str(bad))
        # A frame that names no method of ours (an invalid envelope, an unknown method
        # id) is the worker's, on its channel: ipc then fills in the interface *we*
        # serve it, which would read as a call to the supervisor's own host.
        iface = bad.interface if bad.method is not None else self._iface_name(handle)
        self._emit(events.BadMessageEvent(handle.id, handle.pid, iface, bad.method,
                                          bad.field, bad.reason))

    def _on_cut_off(self, handle: WorkerHandle, cut: ipc.CutOff) -> None:
        handle._kill_for(Outcome.KILLED, str(cut))


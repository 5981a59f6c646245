"""Supervisor: starts sandboxed workers, serves them, kills the sender of a bad message.

    async with Supervisor() as sup:
        w = await sup.spawn(Parser, "myapp.parser:ParserImpl", profile="strict")
        result = await w.remote.parse(ipc.ReadFile(fd))

Everything runs on the caller's asyncio loop; nothing a worker does can
block it (see protections.py for the list and where each one lives).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import itertools
import os
import resource
import site
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from warden import ipc
from warden.ipc.interface import interface_of
from warden.profiles.model import Profile
from warden.supervisor import bootstrap, events, protections
from warden.supervisor.confine import fork_isolation, fork_worker, outer_ids
from warden.supervisor.errors import (
    InvalidArgument,
    NotRunning,
    SpawnError,
    SpawnRefused,
    SpawnUnavailable,
    WorkerStartFailed,
)
from warden.supervisor.events import Event
from warden.supervisor.handle import WorkerHandle
from warden.supervisor.policy import launch_filter, resolve_profile, worker_filter
from warden.supervisor.process import ForkedProcess, SandboxProcess, WorkerProcess
from warden.supervisor.sandbox import Outcome, Sandbox, SetupError, Status, build_spec
from warden.supervisor.sandbox import spawn as sandbox_spawn
from warden.supervisor.sandbox.lowlevel import close_all, fds_from_ancillary, is_seccomp_listener
from warden.supervisor.zygote import ZygoteProcess
from warden.supervisor.zygote import unsupported as zygote_unsupported

if TYPE_CHECKING:
    from warden.supervisor.pool import Pool

__all__ = ["START_METHODS", "SpawnError", "Supervisor"]

START_METHODS = ("spawn", "zygote", "fork")
IfaceT = TypeVar("IfaceT", bound=ipc.Interface)
_CREDS = struct.Struct("=iII")
_HELLO_BYTES = 4 * bootstrap.MAX_FAILURE_CHARS + 64  # HELLO, or a StartFailed record
_OUR_PACKAGES = ("warden", "msgspec", "pyseccomp")


def _module_root(module: str) -> str | None:
    """The sys.path entry a module is imported from (to bind it into a sandbox)."""
    top = module.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not spec.origin and spec.submodule_search_locations:  # a namespace package
        return os.path.realpath(os.path.dirname(next(iter(spec.submodule_search_locations))))
    if not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    path = os.path.dirname(spec.origin)
    if spec.submodule_search_locations:  # a package: its parent dir is the root
        path = os.path.dirname(path)
    return os.path.realpath(path)


def _rlimits(profile: Profile) -> tuple[tuple[int, int], ...]:
    out = [(resource.RLIMIT_CORE, 0)]
    lim = profile.limits
    if lim.open_files is not None:
        out.append((resource.RLIMIT_NOFILE, lim.open_files))
    if lim.processes is not None:
        out.append((resource.RLIMIT_NPROC, lim.processes))
    if lim.memory_bytes is not None:  # `spawn` also gets a cgroup; forked workers only this
        out.append((resource.RLIMIT_AS, lim.memory_bytes))
    if lim.cpu_time_seconds is not None:
        out.append((resource.RLIMIT_CPU, int(lim.cpu_time_seconds)))
    return tuple(out)


def _sandbox_python() -> tuple[str, list[str]]:
    """An interpreter a sandbox can run, and the site dirs to put on its path.

    This interpreter is used when it lives under /usr (bound by the launch
    profile); otherwise (a venv or pyenv build under a private home) the
    system's python3 of the same major.minor, with this environment's
    site-packages on PYTHONPATH (same ABI, so compiled extensions load).
    """
    exe = os.path.realpath(sys.executable)
    sites = [os.path.realpath(p) for p in site.getsitepackages() if os.path.isdir(p)]
    if exe.startswith("/usr/"):
        return exe, sites
    want = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
    if os.path.exists(want):
        return want, sites
    raise SpawnUnavailable(f"start_method='spawn' needs an interpreter a sandbox can bind: "
                     f"{exe} is outside /usr and {want} does not exist")


def _sandbox_spec_for(sup: Supervisor, module_argv: Sequence[str], profile: str | Profile,
                      *modules: str, memory: int | None = None,
                      timeout: float | None = None, seccomp_filter: bytes | None = None,
                      memory_rlimit_only: bool = False) -> Any:
    """A sandbox spec running `python -m <module_argv>` with our packages and `modules` bound."""
    launch = resolve_profile(profile)
    python, site_dirs = _sandbox_python()
    roots: set[str] = set(site_dirs)
    for mod in (*_OUR_PACKAGES, *modules):
        root = _module_root(mod)
        if root:
            roots.add(root)
    roots.update(os.path.realpath(p) for p in sup.code_paths)
    roots = {r for r in roots if not r.startswith(("/usr/", "/lib"))}
    pypath = ":".join(sorted(roots))
    return build_spec([python, "-s", "-m", *module_argv], launch, ro_binds=sorted(roots),
                      env=[f"PYTHONPATH={pypath}"], memory=memory, timeout=timeout,
                      seccomp_filter=seccomp_filter, memory_rlimit_only=memory_rlimit_only)


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
        self.pools: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._subscribers: list[Callable[[Event], object]] = []
        self._queues: list[asyncio.Queue[Event]] = []
        self._streams: list[events.EventStream] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._spawner: concurrent.futures.ThreadPoolExecutor | None = None
        self._own_pidfd = -1
        self._zygote: Any = None
        self._zygote_restart: asyncio.Future[Any] | None = None
        self._orphans: set[asyncio.Task[None]] = set()
        self._channel_watches: set[asyncio.Task[None]] = set()
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
        # Sandboxes die with the thread that started them (parent-death signal),
        # so they are started from one thread that lives as long as we do.
        self._spawner = concurrent.futures.ThreadPoolExecutor(1, "warden-spawner")
        if self._want_zygote:
            from warden.supervisor.zygote import ZygoteClient
            self._zygote = await ZygoteClient.start(self, self._zygote_preload,
                                                    self._zygote_warm)

    async def aclose(self, grace: float = 1.0) -> None:
        """Terminate every worker (grace, then kill), stop the zygote, reap everything."""
        self._closing = True
        for p in list(self.pools.values()):
            await p.aclose(grace)
        live = [w for w in self.workers.values() if w.running]
        if live:
            await asyncio.gather(*(w.terminate(grace) for w in live), return_exceptions=True)
        if self._orphans:
            await asyncio.gather(*self._orphans, return_exceptions=True)
        for task in list(self._channel_watches):
            task.cancel()
        if self._zygote is not None:
            await self._zygote.stop()
            self._zygote = None
        if self._spawner is not None:
            self._spawner.shutdown(wait=True)
            self._spawner = None
        if self._own_pidfd >= 0:
            os.close(self._own_pidfd)
            self._own_pidfd = -1
        for stream in list(self._streams):  # every events() iterator ends after the last event
            stream.close()

    # ---------------------------------------------------------------- events
    def subscribe(self, callback: Callable[[Event], object]) -> None:
        """Call `callback(event)` for every event (exceptions it raises are logged)."""
        self._subscribers.append(callback)

    def event_queue(self, maxsize: int = 10000) -> asyncio.Queue[Event]:
        """A queue that receives every event from now on (events beyond maxsize are dropped)."""
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._queues.append(q)
        return q

    def events(self, maxsize: int = 10000) -> events.EventStream:
        """`async for event in sup.events():` every event from this call on, until the
        supervisor closes (events beyond maxsize unread are dropped)."""
        return events.EventStream(self._streams, maxsize)

    def _emit(self, event: Event) -> None:
        events.log(event)
        for q in self._queues:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(event)
        for stream in self._streams:
            stream.put(event)
        for cb in list(self._subscribers):
            try:
                cb(event)
            except Exception:
                events.logger.exception("event subscriber %r failed", cb)

    # ---------------------------------------------------------------- pools
    async def pool(self, interface: type[IfaceT], target: str | Sequence[str], *,
                   size: int = 2,
                   name: str | None = None, restart: Any = None,
                   call_timeout: float | None = None, health_check: str | None = None,
                   health_interval: float = 5.0, per_worker: int = 1,
                   max_calls_per_worker: int | None = None,
                   **spawn_kwargs: Any) -> Pool[IfaceT]:
        """Start a Pool of `size` workers (see warden.supervisor.pool). `target` is a Python
        worker ("module:Impl") or a program's argv (a list); spawn_kwargs go to
        spawn() or spawn_program()."""
        from warden.supervisor.pool import Pool, RestartPolicy
        pname = name or f"pool{next(self._ids)}"
        if pname in self.pools:
            raise InvalidArgument(f"pool name {pname!r} is already in use")
        p = Pool(self, pname, interface, target, size, restart or RestartPolicy(), call_timeout,
                 health_check, health_interval, spawn_kwargs, per_worker,
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
        return {
            "pid": os.getpid(),
            "workers": sum(1 for w in self.workers.values() if w.running),
            "open_fds": protections.open_fd_count(),
            "zygote": None if self._zygote is None else {"pid": self._zygote.box.pid,
                                                         "alive": not self._zygote.dead},
            "pools": {n: p.status() for n, p in self.pools.items()},
        }

    # ---------------------------------------------------------------- spawning
    def _check_capacity(self) -> None:
        if self._loop is None or self._closing:
            raise NotRunning("the supervisor is not running (use `async with Supervisor()`)")
        running = sum(1 for w in self.workers.values() if w.running)
        protections.check_worker_count(running, self.max_workers)
        protections.check_fd_headroom(per_worker=4, headroom=self.fd_headroom)
        protections.check_memory_headroom(self.memory_headroom)

    async def spawn(self, interface: type[ipc.Interface], target: str, *,
                    profile: str | Profile = "strict", start_method: str | None = None,
                    host: ipc.Interface | None = None, granted: Iterable[str] = (),
                    worker_id: str | None = None, limits: ipc.Limits | None = None,
                    ready_timeout: float = 30.0, memory: int | None = None,
                    timeout: float | None = None) -> WorkerHandle:
        """Start a Python worker serving `interface` with `target` ("module:Impl").

        profile: the seccomp/limits profile the worker loads on itself before
        serving (default "strict"). host: an implementation of an interface the
        worker may call back (its handlers get the trusted ctx: worker id,
        profile, pid); granted: the permissions this worker holds on it.
        Raises SpawnError (with .status) if the worker ends before it is ready,
        CapacityError when the supervisor keeps its headroom.
        """
        self._check_capacity()
        method = start_method or self.start_method
        if method not in START_METHODS:
            raise InvalidArgument(f"start_method={method!r}: expected one of "
                                  f"{', '.join(START_METHODS)}")
        prof = resolve_profile(profile)
        if method == "zygote" and (why := zygote_unsupported(prof)):
            raise SpawnRefused(why)
        wid = worker_id or f"w{next(self._ids)}"
        if wid in self.workers and self.workers[wid].running:
            raise InvalidArgument(f"worker id {wid!r} is already in use")
        host_iface = None
        if host is not None:
            iface = interface_of(host)
            host_iface = f"{iface.__module__}:{iface.__qualname__}"
        boot = bootstrap.Bootstrap(
            worker_id=wid, target=target, host_interface=host_iface, profile=prof.name,
            seccomp_filter=worker_filter(prof, notify=True),
            notify=True, rlimits=_rlimits(prof),
            max_frame_bytes=(limits or self.limits).max_frame_bytes)
        loop = self._loop
        assert loop is not None
        proc: WorkerProcess
        if method == "spawn":
            mem = memory if memory is not None else prof.limits.memory_bytes
            launch = resolve_profile(self.launch_profile)
            if not prof.namespaces.net and launch.namespaces.net:
                # The worker needs the host network its launch profile withholds.
                if self.launch_profile != "default":
                    raise SpawnRefused(f"profile {prof.name!r} needs the host's network, which "
                                     f"launch_profile={self.launch_profile!r} withholds; "
                                     "use a launch profile that shares it, such as "
                                     "'network-client'")
                launch = resolve_profile("network-client")
            # Its launch filter holds no listener (launch_filter), so the worker's
            # own filter can take the stack's one and hand it over like the others.
            spec = _sandbox_spec_for(self, ["warden.supervisor.worker_main"], launch,
                                     target.partition(":")[0], memory=mem, timeout=timeout,
                                     # a profile's limit may be rlimit-only (and is then
                                     # named in the status); one the caller asked for not
                                     memory_rlimit_only=memory is None,
                                     seccomp_filter=launch_filter(launch, prof))
            box = await self._start_sandbox(spec, wid)
            sock = box.take_channel()  # the worker's handle owns it from here
            proc = SandboxProcess(box)
        else:
            parent, child = socket.socketpair(socket.AF_UNIX,
                                              socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            sock = parent
            # The bootstrap waits in the channel before the worker exists, so a
            # pre-forked worker reads it the moment it is handed its channel.
            parent.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            parent.send(bootstrap.encode(boot))
            try:
                if method == "fork":
                    pid = fork_worker(child.fileno(), self._own_pidfd, outer_ids(),
                                      fork_isolation(self.shared_tmp))
                    proc = ForkedProcess(pid)
                else:
                    if self._zygote is None:
                        raise SpawnRefused("start_method='zygote' needs Supervisor(zygote=True) "
                                         "or Supervisor(start_method='zygote')")
                    zygote = await self._live_zygote()
                    proc = await zygote.fork(wid, child)
            except BaseException:
                parent.close()
                raise
            finally:
                child.close()
        sock.setblocking(False)
        try:
            if method == "spawn":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                sock.send(bootstrap.encode(boot))
            pid = await self._await_hello(sock, proc, ready_timeout, wid, want_listener=True)
        except BaseException:
            sock.close()
            if proc.service() is None:  # cancelled (or failed) while it starts: end it
                proc.kill(Outcome.KILLED, f"worker {wid}: spawn() did not complete")
                self._reap_later(proc)
            raise
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
        if isinstance(proc, ZygoteProcess):
            # OSError: it ended between HELLO and here; the zygote reports that.
            with contextlib.suppress(OSError):
                proc.bind(pid)
        proc.setup_done = True
        handle: WorkerHandle = WorkerHandle._create(wid, proc, method, prof.name, loop,
                                                    interface)
        handle.pid = pid  # the worker itself (for `spawn`, the sandbox's init is proc.pid)
        self.workers[wid] = handle
        handle.channel = ipc.attach(
            sock, peer_id=wid, serve=host, remote=interface, granted=granted,
            extra={"worker_id": wid, "profile": prof.name, "start_method": method},
            pid=pid, limits=limits or self.limits,
            on_bad_message=lambda bad: self._on_bad_message(handle, bad),
            on_cut_off=lambda cut: self._on_cut_off(handle, cut),
            validate_outgoing=self.validate_outgoing)
        self._watch(handle)
        self._emit(events.Started(wid, pid, method, prof.name))
        return handle

    async def spawn_program(self, argv: Sequence[str], *,
                            interface: type[ipc.Interface] | None = None,
                            profile: str | Profile = "default", host: ipc.Interface | None = None,
                            granted: Iterable[str] = (), worker_id: str | None = None,
                            limits: ipc.Limits | None = None, **sandbox_options: Any
                            ) -> WorkerHandle:
        """Start any program (the `warden run` machinery) that speaks ipc on fd 3.

        interface: what the program serves (handle.remote), or None. The
        profile's filter is loaded by the sandbox right before exec (its kill
        actions reported through user-notify, with the call's name and
        arguments). sandbox_options are build_spec keywords (ro_binds=,
        memory=, timeout=, files=, ...).
        """
        self._check_capacity()
        prof = resolve_profile(profile)
        wid = worker_id or f"w{next(self._ids)}"
        spec = build_spec(list(argv), prof, **sandbox_options)
        loop = self._loop
        assert loop is not None
        box = await self._start_sandbox(spec, wid)
        proc = SandboxProcess(box)
        proc.setup_done = True
        handle: WorkerHandle = WorkerHandle._create(wid, proc, "program", prof.name, loop,
                                                    interface)
        self.workers[wid] = handle
        sock = box.take_channel() if box.channel is not None else None
        # A channel nobody speaks ipc on (no interface either way) is the program's to
        # close: only a channel that carries calls binds the program's life to it.
        handle._has_channel = sock is not None and (interface is not None or host is not None)
        if sock is None:
            sock, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            other.close()  # no channel: a closed one, so handle.channel always exists
        handle.channel = ipc.attach(
            sock, peer_id=wid, serve=host, remote=interface, granted=granted,
            extra={"worker_id": wid, "profile": prof.name, "start_method": "program"},
            pid=box.pid, limits=limits or self.limits,
            on_bad_message=lambda bad: self._on_bad_message(handle, bad),
            on_cut_off=lambda cut: self._on_cut_off(handle, cut),
            validate_outgoing=self.validate_outgoing)
        self._watch(handle)
        self._emit(events.Started(wid, box.pid, "program", prof.name))
        return handle

    async def _start_sandbox(self, spec: Any, wid: str) -> Sandbox:
        """sandbox.spawn() on the spawner thread; if we are cancelled meanwhile, the
        sandbox it still makes is killed and reaped, never left running unowned."""
        loop = self._loop
        assert loop is not None and self._spawner is not None
        fut = loop.run_in_executor(self._spawner, sandbox_spawn, spec)
        try:
            return await asyncio.shield(fut)
        except SetupError as e:
            raise WorkerStartFailed(f"worker {wid}: {e}", e.status) from None
        except asyncio.CancelledError:
            def orphan(f: asyncio.Future[Sandbox]) -> None:
                if not f.cancelled() and f.exception() is None:
                    box = f.result()
                    box.kill(Outcome.KILLED, f"worker {wid}: spawn() was cancelled")
                    self._reap_later(SandboxProcess(box))
            fut.add_done_callback(orphan)
            raise

    def _reap_later(self, proc: WorkerProcess) -> None:
        """Collect a process nobody holds a handle to (so it cannot become a zombie)."""
        async def reap() -> None:
            await self._final_status(proc)
            if isinstance(proc, SandboxProcess):
                proc.box.close_channel()
        task = asyncio.ensure_future(reap())
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def _live_zygote(self) -> Any:
        """The zygote, replaced by a new one if it has ended.

        A new zygote is as clean as the first: it is a fresh interpreter
        exec'ed in a new sandbox, never a fork of this process.
        """
        if self._zygote.dead:
            if self._zygote_restart is None:
                from warden.supervisor.zygote import ZygoteClient
                events.logger.warning("the zygote ended; starting a new one")
                self._zygote_restart = asyncio.ensure_future(ZygoteClient.start(
                    self, self._zygote_preload, self._zygote_warm))
            restart = self._zygote_restart
            try:
                new = await asyncio.shield(restart)
            finally:
                if self._zygote_restart is restart and restart.done():
                    self._zygote_restart = None
            if self._zygote.dead:
                old, self._zygote = self._zygote, new
                await old.stop()
        return self._zygote

    async def _await_hello(self, sock: socket.socket, proc: WorkerProcess, timeout: float,
                           wid: str, want_listener: bool) -> int:
        """Wait for the worker's HELLO; the kernel's credentials give its pid as we see it."""
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future[int] = loop.create_future()

        def on_sock() -> None:
            try:
                data, anc, _flags, _addr = sock.recvmsg(
                    _HELLO_BYTES, socket.CMSG_SPACE(_CREDS.size) + socket.CMSG_SPACE(4),
                    socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return
            except OSError as e:
                data, anc = b"", []
                if not fut.done():
                    fut.set_exception(e)
                    return
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _CREDS.unpack(payload[:_CREDS.size])[0]
            fds = fds_from_ancillary(anc)
            listener = fds.pop() if want_listener and len(fds) == 1 else None
            close_all(fds)
            if listener is not None and not is_seccomp_listener(listener):
                os.close(listener)
                listener = None
            if fut.done():
                if listener is not None:
                    os.close(listener)
                return
            if data == bootstrap.HELLO and pid and (listener is not None or not want_listener):
                if listener is not None:
                    proc.adopt_listener(listener)
                fut.set_result(pid)
            elif data == bootstrap.HELLO and pid:
                fut.set_exception(ConnectionError("the worker did not hand over its seccomp "
                                                  "listener"))
            else:
                failure = bootstrap.decode_failure(data) if data else None
                fut.set_exception(ConnectionError(
                    f"it reported {failure}"
                    if failure is not None else
                    "the worker closed its channel before it was ready" if not data else
                    "the worker sent something before HELLO"))

        def on_proc() -> None:
            if proc.service() is not None and not fut.done():
                on_sock()  # its last words (StartFailed) may still wait in the channel
                if not fut.done():
                    fut.set_exception(ConnectionError("the worker ended before it was ready"))

        loop.add_reader(sock.fileno(), on_sock)
        watched = proc.fds()
        for fd in watched:
            loop.add_reader(fd, on_proc)
        try:
            return await asyncio.wait_for(fut, timeout)
        except (ConnectionError, TimeoutError) as e:
            reason = (f"not ready within {timeout:g}s" if isinstance(e, TimeoutError)
                      else str(e))
            proc.kill(Outcome.SETUP_ERROR, f"worker {wid}: {reason}")
            status = await self._final_status(proc)
            if status.outcome is Outcome.SETUP_ERROR and status.reason != f"worker {wid}: {reason}":
                # It ended on its own before our kill could record the cause (its exit,
                # read first, said only that it failed): its own words are the reason.
                status = dataclasses.replace(status, reason=f"worker {wid}: {reason}")
            self._emit(events.Exited(wid, proc.pid, status))
            raise WorkerStartFailed(f"worker {wid} failed to start: {reason} ({status.describe()})",
                             status) from None
        finally:
            loop.remove_reader(sock.fileno())
            for fd in watched:
                loop.remove_reader(fd)

    async def _final_status(self, proc: WorkerProcess) -> Status:
        while True:
            st = proc.service()
            if st is not None:
                return st
            await asyncio.sleep(0.002)

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


"""Pools: N workers of one spec, a queue that routes each call to an idle worker, restarts.

    pool = await sup.pool(Parser, "myapp.parser:Impl", size=4, profile="strict",
                          restart=RestartPolicy("on-failure"), call_timeout=5.0)
    result = await pool.call("parse", ipc.ReadFile(fd))

Each worker takes `per_worker` calls at a time (default 1; more pipelines
calls, and a death then fails all of that worker's calls). A call that
outlives its deadline gets its worker killed (outcome `timeout`:
a stuck worker is not trusted to recover) and raises DeadlineExceeded. A
worker that dies mid-call fails that call with WorkerDied; calls on other
workers go on. Calls are never retried on another worker: the pool cannot
know whether a call is safe to repeat.

A call cancelled by its caller (asyncio.wait_for, asyncio.timeout, a
TaskGroup) keeps its worker busy until the reply comes (the reply is then
dropped and the worker free again) or until the call's deadline (the worker
is then killed, outcome `timeout`): the worker is still working on it, and
a hung one must not be handed the next call. Killing on every cancel would
be simpler, but a TaskGroup cancelling its siblings would then kill healthy
workers and run the pool into its crash-loop limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from warden import ipc
from warden.ipc.interface import MethodSpec
from warden.supervisor import events
from warden.supervisor.errors import DeadlineExceeded, InvalidArgument, InvalidCall, PoolError
from warden.supervisor.handle import WorkerHandle
from warden.supervisor.sandbox import Outcome, Status

__all__ = ["RESTART_MODES", "DeadlineExceeded", "Pool", "PoolError", "RestartPolicy",
           "WorkerSpawner"]

RESTART_MODES = ("never", "on-failure", "always")
IfaceT = TypeVar("IfaceT", bound=ipc.Interface)
P = ParamSpec("P")
R = TypeVar("R")


def _close_reply(value: Any) -> None:
    """Dispose of a reply nobody awaits (closing any fd it carries)."""
    close = getattr(value, "close", None)
    if callable(close):
        close()


class _Call:
    """One pool call: queued until a worker is free, then sent on it.

    The channel tells it the outcome inside the read callback that brought the reply
    (`AsyncChannel.call_into`), where the worker is at once handed the next queued call:
    no future chained to another, no task woken just to pass the worker on. Its caller
    awaits `fut` only. `done()` is always false: what a reply means once the caller gave
    up (cancelled: the worker is free again; past the deadline: the worker was killed) is
    decided here, not by the channel.
    """

    __slots__ = ("answered", "args", "expired", "fut", "hold", "kwargs", "left", "limit",
                 "method", "pool", "spec", "timer", "worker")

    def __init__(self, pool: Pool[Any], method: str, spec: MethodSpec,
                 args: tuple[Any, ...], kwargs: dict[str, Any], fut: asyncio.Future[Any],
                 hold: bool) -> None:
        self.pool = pool
        self.method = method
        self.spec = spec
        self.args = args
        self.kwargs = kwargs
        self.fut = fut
        self.hold = hold  # check_result runs first: the caller releases the worker
        self.worker: WorkerHandle | None = None
        self.answered = self.expired = self.left = False
        self.limit = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def done(self) -> bool:
        return False

    def _leave(self, w: WorkerHandle) -> None:
        """The call no longer counts as in flight on its worker (once)."""
        if not self.left:
            self.left = True
            w._in_flight -= 1

    def set_result(self, value: Any) -> None:
        self._answer(value, None)

    def set_exception(self, exc: BaseException) -> None:
        if isinstance(exc, ipc.ChannelClosed):  # the channel ended first: the worker is dying
            w = self.worker
            assert w is not None
            self.answered = True
            self._leave(w)
            w._cut_short = True
            if self.timer is not None:
                self.timer.cancel()
            if not self.fut.done():
                self.fut.set_exception(exc)
            return
        self._answer(None, exc)

    def _answer(self, value: Any, exc: BaseException | None) -> None:
        """The worker answered (a result, or the RemoteError of its handler): it is fine."""
        w = self.worker
        assert w is not None
        self.answered = True
        self._leave(w)
        if self.timer is not None:
            self.timer.cancel()
        fut = self.fut
        if fut.done():  # its caller gave up: cancelled, or past its deadline (killed)
            if exc is None:
                _close_reply(value)
            if not self.expired:
                self.pool._call_ended(w)
            return
        if not self.hold:  # the next queued call leaves first: the worker waits least
            self.pool._call_ended(w)
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    def expire(self) -> None:
        """The call's deadline: a queued call fails; a running one gets its worker killed."""
        self.timer = None
        fut, w, m, limit = self.fut, self.worker, self.method, self.limit
        if w is None:
            if not fut.done():
                fut.set_exception(DeadlineExceeded(
                    f"pool {self.pool.name!r}: no worker free within {limit:g}s for {m}()"))
            return
        if self.answered:
            return
        self.expired = True
        self._leave(w)
        if fut.done():  # cancelled by its caller, still running on its worker
            w._kill_for(Outcome.TIMEOUT, f"call {m}() was cancelled by its caller and "
                        f"exceeded its {limit:g}s deadline")
            return
        w._kill_for(Outcome.TIMEOUT, f"call {m}() exceeded its {limit:g}s deadline")
        fut.set_exception(DeadlineExceeded(f"worker {w.id}: {m}() exceeded its {limit:g}s "
                                           "deadline; the worker was killed"))


class WorkerSpawner(Protocol):
    """What a pool starts its workers with (the Supervisor is one)."""

    # spawn(interface, target, worker_id=..., **spawn_kwargs) and
    # spawn_program(argv, interface=..., worker_id=..., **spawn_kwargs), as the
    # Supervisor's: the pool passes its spawn_kwargs through unread.
    async def spawn(self, *args: Any, **kwargs: Any) -> WorkerHandle: ...

    async def spawn_program(self, *args: Any, **kwargs: Any) -> WorkerHandle: ...


@dataclass(frozen=True)
class RestartPolicy:
    """When to replace a worker that ended, and how fast.

    mode: "never", "on-failure" (any outcome but ok), or "always".
    backoff: first delay before a restart, doubled after each consecutive
    failure up to max_backoff; reset by a worker that served a call.
    crash_loop_limit restarts within crash_loop_window seconds stop the pool's
    restarts (the pool then fails calls with PoolError until closed).
    """

    mode: str = "on-failure"
    backoff: float = 0.05
    max_backoff: float = 5.0
    crash_loop_limit: int = 10
    crash_loop_window: float = 30.0

    def __post_init__(self) -> None:
        if self.mode not in RESTART_MODES:
            raise InvalidArgument(f"restart mode {self.mode!r}: expected one of "
                             f"{', '.join(RESTART_MODES)}")
        if self.backoff < 0 or self.max_backoff < self.backoff:
            raise InvalidArgument("restart backoff must be >= 0 and <= max_backoff")
        if self.crash_loop_limit < 1 or self.crash_loop_window <= 0:
            raise InvalidArgument("crash_loop_limit must be >= 1 and crash_loop_window > 0")


class Pool(Generic[IfaceT]):
    """Made by Supervisor.pool(); see the module docstring."""

    def __init__(self, spawner: WorkerSpawner, sink: events.EventSink, name: str,
                 interface: type[IfaceT],
                 target: str | Sequence[str],
                 size: int, restart: RestartPolicy, call_timeout: float | None,
                 health_check: str | None, health_interval: float,
                 spawn_kwargs: dict[str, Any], per_worker: int = 1,
                 max_calls_per_worker: int | None = None) -> None:
        if size < 1:
            raise InvalidArgument(f"pool {name!r}: size must be >= 1, got {size}")
        if per_worker < 1:
            raise InvalidArgument(f"pool {name!r}: per_worker must be >= 1, got {per_worker}")
        if max_calls_per_worker is not None and max_calls_per_worker < 1:
            raise InvalidArgument(f"pool {name!r}: max_calls_per_worker must be >= 1, "
                             f"got {max_calls_per_worker}")
        self.per_worker = per_worker
        self.max_calls_per_worker = max_calls_per_worker
        self._spawner = spawner
        self._sink = sink
        self.name = name
        self.interface = interface
        self.target = target
        self.size = size
        self.restart = restart
        self.call_timeout = call_timeout
        self.health_check = health_check
        self.health_interval = health_interval
        self._spawn_kwargs = spawn_kwargs
        self.workers: dict[str, WorkerHandle] = {}
        self._idle: deque[WorkerHandle] = deque()
        self._queue: deque[_Call] = deque()  # calls waiting for a worker, in order
        self._restarts: deque[float] = deque()
        self._consecutive_failures = 0
        self._serial = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        # max_calls_per_worker: calls started on each worker, those still running, and
        # the workers that take no more (terminated when their last call ends).
        self._started: dict[str, int] = {}
        self._running: dict[str, int] = {}
        self._retired: set[str] = set()
        self.failed: str | None = None
        self.closed = False
        self.calls_ok = 0
        self.calls_failed = 0
        self.restarts = 0

    # ------------------------------------------------------------ lifecycle
    async def _start(self) -> None:
        await asyncio.gather(*(self._add_worker() for _ in range(self.size)))
        if self.health_check is not None:
            self._spawn_task(self._health_loop())

    def _spawn_task(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _add_worker(self, replaces: str | None = None, attempt: int = 0,
                          delay: float = 0.0) -> WorkerHandle:
        self._serial += 1
        wid = f"{self.name}-{self._serial}"
        if isinstance(self.target, str):
            w = await self._spawner.spawn(self.interface, self.target, worker_id=wid,
                                     **self._spawn_kwargs)
        else:
            w = await self._spawner.spawn_program(self.target, interface=self.interface,
                                             worker_id=wid, **self._spawn_kwargs)
        self.workers[wid] = w
        if replaces is not None:
            self._sink.emit(events.Restarted(wid, w.pid, self.name, replaces, attempt, delay))
        self._spawn_task(self._watch(w))
        for _ in range(self.per_worker):
            self._release(w)
        return w

    async def _watch(self, w: WorkerHandle) -> None:
        status = await w.wait()
        self.workers.pop(w.id, None)
        while w in self._idle:
            self._idle.remove(w)
        self._started.pop(w.id, None)
        self._running.pop(w.id, None)
        if w.id in self._retired:
            self._retired.discard(w.id)
            if not (self.closed or self.failed):  # served its share: replaced, not a failure
                self._spawn_task(self._add_worker_or_replace(w.id))
            return
        if self.closed:
            return
        if self._should_restart(status):
            self._spawn_task(self._replace(w.id))

    def _should_restart(self, status: Status) -> bool:
        mode = self.restart.mode
        if mode == "never":
            return False
        return mode == "always" or status.outcome is not Outcome.OK

    async def _replace(self, old: str) -> None:
        now = time.monotonic()
        window = self.restart.crash_loop_window
        while self._restarts and now - self._restarts[0] > window:
            self._restarts.popleft()
        if len(self._restarts) >= self.restart.crash_loop_limit:
            self._fail(f"pool {self.name!r} stopped restarting: {len(self._restarts)} restarts "
                       f"within {window:g}s (crash-loop limit)")
            return
        self._restarts.append(now)
        delay = min(self.restart.backoff * (2 ** self._consecutive_failures),
                    self.restart.max_backoff)
        self._consecutive_failures += 1
        await asyncio.sleep(delay)
        if self.closed or self.failed:
            return
        self.restarts += 1
        try:
            await self._add_worker(replaces=old, attempt=len(self._restarts), delay=delay)
        except Exception as e:  # a failed restart counts as a crash: try again, loop-limited
            events.logger.warning("pool %s: restart failed: %s", self.name, e)
            if not self.closed:
                self._spawn_task(self._replace(old))

    async def _add_worker_or_replace(self, old: str) -> None:
        try:
            await self._add_worker()
        except Exception as e:
            events.logger.warning("pool %s: replacing a retired worker failed: %s", self.name, e)
            if not self.closed:
                self._spawn_task(self._replace(old))

    def _fail(self, reason: str) -> None:
        self.failed = reason
        events.logger.error("%s", reason)
        if not self.workers:
            self._fail_queued(PoolError(reason))

    def _fail_queued(self, exc: Exception) -> None:
        while self._queue:
            c = self._queue.popleft()
            if c.timer is not None:
                c.timer.cancel()
            if not c.fut.done():
                c.fut.set_exception(exc)

    async def aclose(self, grace: float = 1.0) -> None:
        """Terminate the workers; calls waiting for one fail with PoolError."""
        self.closed = True
        for t in list(self._tasks):
            t.cancel()
        self._fail_queued(PoolError(f"pool {self.name!r} is closed"))
        await asyncio.gather(*(w.terminate(grace) for w in list(self.workers.values())),
                             return_exceptions=True)

    def replace_workers(self, reason: str = "the pool was restarted") -> int:
        """Replace every worker: each is killed now (its calls in flight fail with
        WorkerDied naming `reason`) and a new one started in its place, as for a worker
        retired after its share of calls (no restart backoff, no crash-loop count).
        Returns how many were replaced."""
        if self.closed or self.failed:
            return 0
        workers = list(self.workers.values())
        for w in workers:
            self._retired.add(w.id)
            while w in self._idle:
                self._idle.remove(w)
            w.kill(reason)
        return len(workers)

    # ------------------------------------------------------------ routing
    def _count_call(self, w: WorkerHandle) -> None:
        """A call starts on `w`: at max_calls_per_worker it takes no more."""
        if self.max_calls_per_worker is None:
            return
        self._running[w.id] = self._running.get(w.id, 0) + 1
        started = self._started[w.id] = self._started.get(w.id, 0) + 1
        if started >= self.max_calls_per_worker:
            self._retired.add(w.id)
            while w in self._idle:  # its other slots (per_worker > 1)
                self._idle.remove(w)

    def _call_ended(self, w: WorkerHandle) -> None:
        """A call on `w` ended and `w` is fine: release it, or retire it after its share."""
        if self.max_calls_per_worker is not None:
            self._running[w.id] -= 1
            if w.id in self._retired:
                if self._running[w.id] == 0:
                    self._spawn_task(w.terminate())
                return
        self._release(w)

    def _release(self, w: WorkerHandle) -> None:
        """`w` has a free slot: it takes the first queued call, or waits among the idle."""
        if not w.alive or self.closed or w.id in self._retired:
            return
        queue = self._queue
        while queue:
            c = queue.popleft()
            if c.fut.done():  # its caller gave up (cancelled, deadline) while it waited
                continue
            try:
                if self._send_on(c, w):
                    return
            except Exception as e:  # arguments the declaration refuses: that caller's error
                if c.timer is not None:
                    c.timer.cancel()
                c.fut.set_exception(e)
                continue
            queue.appendleft(c)  # w's channel closed under us: c waits for another worker
            return
        self._idle.append(w)

    def _send_on(self, c: _Call, w: WorkerHandle) -> bool:
        """Send `c` on `w`; False (nothing left) when `w`'s channel has already closed, or
        closed during this send (the worker stopped receiving: EPIPE, or a cut-off): `c`
        then goes to another worker."""
        c.worker = w
        w._in_flight += 1
        try:
            w.channel.call_into(c.spec, c, c.args, c.kwargs)
        except BaseException as e:
            c.worker = None
            w._in_flight -= 1
            if isinstance(e, ipc.ChannelClosed):
                return False
            raise
        self._count_call(w)
        return True

    def _dispatch(self, c: _Call) -> None:
        """Send `c` on an idle worker now, or queue it for the next one freed."""
        idle = self._idle
        while idle:
            w = idle.popleft()
            if not w.alive:
                continue
            try:
                started = self._send_on(c, w)
            except BaseException:  # arguments the declaration refuses
                self._release(w)
                raise
            if started:
                return
            # Its channel closed after it was idle (it is being killed): the call never
            # left, so it goes to another worker; nothing waits on a dead channel.
        if self.closed:
            raise PoolError(f"pool {self.name!r} is closed")
        if self.failed and not self.workers:
            raise PoolError(self.failed)
        self._queue.append(c)

    def _spec(self, method: str) -> MethodSpec:
        spec = self.interface.__ipc_methods__.get(method)
        if spec is None:
            raise AttributeError(f"{self.interface.__ipc_name__} has no method {method!r}")
        return spec

    @overload
    async def call(self, method: Callable[Concatenate[IfaceT, ipc.Context, P], R], /,
                   *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    async def call(self, method: str, /, *args: Any, deadline: float | None = None,
                   check_result: Callable[[str, Any], Any] | None = None,
                   **kwargs: Any) -> Any: ...

    async def call(self, method: str | Callable[..., Any], /, *args: Any,
                   deadline: Any = None, check_result: Any = None, **kwargs: Any) -> Any:
        """Run `method` on an idle worker. deadline (seconds, default call_timeout) covers
        the wait for a worker and the call; past it the worker is killed.

        `method` is the declaration's method, `pool.call(Parser.parse, fd)` (checked by a
        type checker against the declaration; the pool's call_timeout applies), or its
        name, `pool.call("parse", fd, deadline=2.0)`.
        check_result(worker_id, reply) -> value runs before the worker is released; an
        ipc.BadMessage it raises kills the worker as for a bad message, and is raised.
        """
        if not isinstance(method, str):
            method = self._method_name(method)
        limit = deadline if deadline is not None else self.call_timeout
        loop = asyncio.get_running_loop()
        c = _Call(self, method, self._spec(method), args, kwargs, loop.create_future(),
                  check_result is not None)
        if limit is not None:
            c.limit = limit
            c.timer = loop.call_later(max(0.0, limit), c.expire)
        try:
            self._dispatch(c)
        except BaseException:
            self.calls_failed += 1
            if c.timer is not None:
                c.timer.cancel()
            raise
        try:
            result = await c.fut
            if check_result is not None:
                assert c.worker is not None
                result = check_result(c.worker.id, result)
        except DeadlineExceeded:  # expire() failed it (and killed its worker, if it ran)
            self.calls_failed += 1
            raise
        except ipc.ChannelClosed:
            self.calls_failed += 1
            assert c.worker is not None
            raise await c.worker._died(method) from None
        except asyncio.CancelledError:
            self.calls_failed += 1
            self._cancelled(c)
            raise
        except ipc.BadMessage as bad:  # check_result refused the reply
            self.calls_failed += 1
            assert c.worker is not None
            c.worker._on_bad_message(bad)
            raise
        except BaseException:  # the worker answered with an error: it is fine
            self.calls_failed += 1
            if c.hold and c.worker is not None and c.answered:
                self._call_ended(c.worker)
            raise
        self.calls_ok += 1
        self._consecutive_failures = 0
        if c.hold:
            assert c.worker is not None
            self._call_ended(c.worker)
        return result

    def _cancelled(self, c: _Call) -> None:
        """A cancelled call: its worker stays busy until the reply (dropped; the worker is
        released) or the call's deadline (the worker is killed); see the module docstring."""
        if c.worker is None:  # still queued: it never runs (the queue skips it)
            if c.timer is not None:
                c.timer.cancel()
            return
        if not c.answered:
            return  # in flight: _Call._answer or expire() ends it
        f = c.fut  # the reply came before its caller resumed
        if f.cancelled():
            return  # it came after the cancel: _answer dropped it and freed the worker
        if f.exception() is None:
            _close_reply(f.result())
        if c.hold:
            self._call_ended(c.worker)

    def _method_name(self, method: Callable[..., Any]) -> str:
        name = getattr(method, "__name__", "")
        iface = self.interface
        if name not in iface.__ipc_methods__ or getattr(iface, name, None) is not method:
            raise InvalidCall(f"pool {self.name!r}: {method!r} is not a method declared by "
                            f"{iface.__qualname__}; pass {iface.__qualname__}.<method> or "
                            "the method's name")
        return name

    # ------------------------------------------------------------ health
    async def _health_loop(self) -> None:
        assert self.health_check is not None
        while not self.closed:
            await asyncio.sleep(self.health_interval)
            for w in list(self._idle):
                if not w.alive or w not in self._idle:
                    continue
                self._idle.remove(w)
                try:
                    await asyncio.wait_for(getattr(w.remote, self.health_check)(),
                                           self.health_interval)
                except TimeoutError:
                    w._kill_for(Outcome.TIMEOUT, f"health check {self.health_check}() "
                                "did not answer in time")
                    continue
                except Exception as e:
                    w._kill_for(Outcome.KILLED, f"health check {self.health_check}() "
                                f"failed: {e}")
                    continue
                self._release(w)

    async def full(self, timeout: float = 30.0) -> bool:
        """Wait until the pool has all `size` workers again (after restarts); False if it
        failed, closed or the timeout passed first."""
        end = time.monotonic() + timeout
        while len(self.workers) < self.size or self._holds_dead_workers():
            if self.failed or self.closed or time.monotonic() > end:
                return False
            await asyncio.sleep(0.01)
        return True

    def _holds_dead_workers(self) -> bool:
        """A worker whose process or channel ended (it is on its way out)."""
        return any(not w.alive for w in self.workers.values())

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target if isinstance(self.target, str) else list(self.target),
            "size": self.size,
            "alive": sum(1 for w in self.workers.values() if w.alive),
            "idle": len(self._idle),
            "waiting_calls": sum(1 for c in self._queue if not c.fut.done()),
            "restarts": self.restarts, "calls_ok": self.calls_ok,
            "calls_failed": self.calls_failed, "failed": self.failed,
            "workers": {w.id: {"pid": w.pid, "start_method": w.start_method,
                               "profile": w.profile} for w in self.workers.values()},
        }

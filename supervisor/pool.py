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
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from warden import ipc
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


def _chain(mine: asyncio.Future[Any], sent: asyncio.Future[Any]) -> None:
    if mine.done():  # our caller was cancelled or timed out: _abandon or the kill handles it
        return
    if sent.cancelled():
        mine.cancel()
    elif (exc := sent.exception()) is not None:
        mine.set_exception(exc)
    else:
        mine.set_result(sent.result())


def _drop_reply(f: asyncio.Future[Any]) -> bool:
    """Dispose of a reply nobody awaits (closing any fds it carries). True when the
    call ended with the channel (its worker is dying), False when the worker answered."""
    if f.cancelled():
        return True
    exc = f.exception()
    if exc is None:
        close = getattr(f.result(), "close", None)
        if callable(close):
            close()
        return False
    return isinstance(exc, ipc.ChannelClosed)


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
        self._waiters: deque[asyncio.Future[WorkerHandle]] = deque()
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
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_exception(PoolError(reason))

    async def aclose(self, grace: float = 1.0) -> None:
        """Terminate the workers; calls waiting for one fail with PoolError."""
        self.closed = True
        for t in list(self._tasks):
            t.cancel()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(PoolError(f"pool {self.name!r} is closed"))
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
        if not w.alive or self.closed or w.id in self._retired:
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(w)
                return
        self._idle.append(w)

    async def _acquire(self) -> WorkerHandle:
        while self._idle:
            w = self._idle.popleft()
            if w.alive:
                return w
        if self.closed:
            raise PoolError(f"pool {self.name!r} is closed")
        if self.failed and not self.workers:
            raise PoolError(self.failed)
        fut: asyncio.Future[WorkerHandle] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        # A waiter leaves the queue when _release pops it; one cancelled here stays,
        # done, until _release skips it (removing it would scan the whole queue).
        try:
            return await fut
        except asyncio.CancelledError:
            # Cancelled after a worker was handed to us but before we ran: pass it on.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result())
            raise

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
        end = None if limit is None else time.monotonic() + limit
        while True:
            try:
                left = None if end is None else max(0.0, end - time.monotonic())
                w = await asyncio.wait_for(self._acquire(), left)
            except TimeoutError:
                self.calls_failed += 1
                raise DeadlineExceeded(f"pool {self.name!r}: no worker free within "
                                       f"{limit:g}s for {method}()") from None
            try:
                sent = w._send(getattr(w.channel.remote, method), args, kwargs)
            except BaseException:  # no such method, or arguments the declaration refuses
                self.calls_failed += 1
                self._release(w)
                raise
            if sent is not None:
                self._count_call(w)
                break
            # Its channel closed after it was handed to us (it is being killed): the call
            # never left, so it goes to another worker; nothing waits on a dead channel.
        w._in_flight += 1
        # We await a future of our own that the reply's resolves: cancelling us then leaves
        # the call running on its worker (_abandon). asyncio.shield() does the same with
        # more machinery per call.
        mine: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sent.add_done_callback(functools.partial(_chain, mine))
        try:
            if end is None:
                result = await mine
            else:
                result = await asyncio.wait_for(mine, max(0.0, end - time.monotonic()))
            if check_result is not None:
                result = check_result(w.id, result)
        except TimeoutError:
            w._in_flight -= 1
            self.calls_failed += 1
            sent.add_done_callback(_drop_reply)
            w._kill_for(Outcome.TIMEOUT, f"call {method}() exceeded its {limit:g}s deadline")
            raise DeadlineExceeded(f"worker {w.id}: {method}() exceeded its {limit:g}s "
                                   "deadline; the worker was killed") from None
        except ipc.ChannelClosed:
            w._in_flight -= 1
            w._cut_short = True
            self.calls_failed += 1
            raise await w._died(method) from None
        except asyncio.CancelledError:
            self.calls_failed += 1
            self._abandon(w, sent, method, end, limit)  # still in flight
            raise
        except ipc.BadMessage as bad:  # check_result refused the reply
            w._in_flight -= 1
            self.calls_failed += 1
            w._on_bad_message(bad)
            raise
        except BaseException:  # the worker answered with an error: it is fine
            w._in_flight -= 1
            self.calls_failed += 1
            self._call_ended(w)
            raise
        w._in_flight -= 1
        self.calls_ok += 1
        self._consecutive_failures = 0
        self._call_ended(w)
        return result

    def _abandon(self, w: WorkerHandle, sent: asyncio.Future[Any], method: str,
                 end: float | None, limit: float | None) -> None:
        """A cancelled call: its worker stays busy until the reply (dropped; the worker is
        released) or the call's deadline (the worker is killed); see the module docstring."""
        timer: asyncio.TimerHandle | None = None
        if end is not None:
            timer = asyncio.get_running_loop().call_later(
                max(0.0, end - time.monotonic()), w._kill_for, Outcome.TIMEOUT,
                f"call {method}() was cancelled by its caller and exceeded its "
                f"{limit:g}s deadline")

        def replied(f: asyncio.Future[Any]) -> None:
            if timer is not None:
                timer.cancel()
            if _drop_reply(f):
                w._cut_short = True
            else:
                w._in_flight -= 1
                self._call_ended(w)

        sent.add_done_callback(replied)

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
            "idle": len(self._idle), "waiting_calls": sum(1 for f in self._waiters if not f.done()),
            "restarts": self.restarts, "calls_ok": self.calls_ok,
            "calls_failed": self.calls_failed, "failed": self.failed,
            "workers": {w.id: {"pid": w.pid, "start_method": w.start_method,
                               "profile": w.profile} for w in self.workers.values()},
        }

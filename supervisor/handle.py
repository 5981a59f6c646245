"""WorkerHandle: the embedder's view of one worker. Made only by the Supervisor.

Like trio's Process: no public constructor; `kill()` is immediate,
`terminate()` closes the channel (the worker's cue to exit), waits a grace
period, then kills; `wait()` returns the final Status. Calls through
`handle.remote` that the worker's death interrupts raise `WorkerDied`, which
names the worker, the method and how it ended.

The channel and the process are one (the supervisor enforces it, see
core.py): `alive` is false as soon as either has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from warden import ipc
from warden.errors import ChildFailed
from warden.supervisor.errors import SupervisorError
from warden.supervisor.events import describe
from warden.supervisor.process import WorkerProcess
from warden.supervisor.sandbox import Outcome, Status
from warden.supervisor.sandbox.lowlevel import NoPublicConstructor


class WorkerDied(ipc.ChannelClosed, SupervisorError, ChildFailed):
    """A call could not complete because its worker ended."""

    def __init__(self, worker_id: str, method: str, status: Status | None) -> None:
        how = describe(status) if status is not None else "its channel closed"
        super().__init__(f"worker {worker_id} ended during {method}(): {how}")
        self.worker_id = worker_id
        self.method = method
        self.status = status

    def __reduce__(self) -> tuple[type[WorkerDied], tuple[str, str, Status | None]]:
        # Pickled as its parts (a dask worker sends a task's exception to the client).
        return (type(self), (self.worker_id, self.method, self.status))


class _Remote:
    """`await handle.remote.method(...)`: the ipc proxy, with the worker's death made explicit."""

    def __init__(self, handle: WorkerHandle) -> None:
        self._handle = handle

    def __getattr__(self, name: str) -> Callable[..., Any]:
        handle = self._handle
        inner = getattr(handle.channel.remote, name)
        spec = handle.interface.__ipc_methods__.get(name) if handle.interface else None
        if spec is None or spec.oneway:
            return inner  # type: ignore[no-any-return]

        async def reply(sent: asyncio.Future[Any] | None) -> Any:
            if sent is None:
                raise await handle._died(name)
            handle._in_flight += 1
            try:
                return await sent
            except ipc.ChannelClosed:
                handle._cut_short = True
                raise await handle._died(name) from None
            finally:
                handle._in_flight -= 1

        def call(*args: Any, **kwargs: Any) -> Awaitable[Any]:
            # Sent now (calls leave in the order they are made); awaited later.
            return reply(handle._send(inner, args, kwargs))

        call.__name__ = name
        setattr(self, name, call)
        return call


class WorkerHandle(metaclass=NoPublicConstructor):
    """A running (or finished) worker. See the module docstring."""

    _factory_name = "Supervisor.spawn()"

    id: str
    pid: int
    start_method: str
    profile: str
    channel: ipc.AsyncChannel
    interface: type[ipc.Interface] | None
    remote: Any
    _process: WorkerProcess
    _done: asyncio.Future[Status]
    # Those awaiting the end, resolved directly when it comes (asyncio.shield(_done)
    # would cost each of them two more turns of a busy loop).
    _waiters: list[asyncio.Future[Status | None]]
    _watched: tuple[int, ...]
    # Set by the supervisor: the worker has a channel it must keep (programs may have none).
    _has_channel: bool
    # The supervisor asked it to end (terminate()) or closed the channel itself: an exit
    # after that is the expected one, and the channel's close is not the worker's doing.
    _asked_to_end: bool
    _hung_up: bool
    # Calls awaited and not answered yet; whether one was cut short by the channel's
    # close (counted by the awaiting code itself: a done-callback per call would cost
    # each call another turn of the loop).
    _in_flight: int
    _cut_short: bool
    _kill_sent: bool
    # Set by the supervisor: what to do with a reply a caller's check refused (kill the
    # worker and report it, as for a bad message on the channel).
    _on_bad_message: Callable[[ipc.BadMessage], None]

    def __init__(self, worker_id: str, process: WorkerProcess, start_method: str, profile: str,
                 loop: asyncio.AbstractEventLoop, interface: type[ipc.Interface] | None
                 ) -> None:
        # Only through WorkerHandle._create (NoPublicConstructor): Supervisor.spawn().
        self.interface = interface
        self.id = worker_id
        self._process = process
        self.pid = process.pid
        self.start_method = start_method
        self.profile = profile
        self._done = loop.create_future()
        self._waiters = []
        self.remote = _Remote(self)
        self._watched = ()
        self._has_channel = True
        self._asked_to_end = self._hung_up = self._cut_short = False
        self._kill_sent = False  # the supervisor has decided its end: it takes no more calls
        self._in_flight = 0

    def __repr__(self) -> str:
        state = self.outcome.value if self.outcome else "running"
        return f"<WorkerHandle {self.id} pid={self.pid} {self.start_method} {state}>"

    @property
    def status(self) -> Status | None:
        return self._done.result() if self._done.done() else None

    @property
    def outcome(self) -> Outcome | None:
        st = self.status
        return st.outcome if st else None

    @property
    def alive(self) -> bool:
        """Running, with its channel open, not being killed: a worker that can take a
        call (a SIGKILLed worker stays `running` until the kernel reports its end)."""
        if self._done.done() or self._kill_sent:
            return False
        return not (self._has_channel and self.channel.closed)

    @property
    def running(self) -> bool:
        """The process has not been reported ended (it may be dying: see `alive`)."""
        return not self._done.done()

    def kill(self, reason: str = "killed by the embedder") -> None:
        """SIGKILL to the worker's whole sandbox now; outcome `killed` unless a cause came first."""
        self._kill_for(Outcome.KILLED, reason)

    def _kill_for(self, outcome: Outcome, reason: str) -> None:
        self._kill_sent = True
        self._process.kill(outcome, reason)
        if not self._done.done():
            self._on_killed()

    def _on_killed(self) -> None:
        """Set by the supervisor: watch for the end of a worker it has just killed."""

    def _hang_up(self) -> None:
        """Close the channel from our side (so its close is not blamed on the worker)."""
        self._hung_up = True
        self.channel.close()

    def _send(self, inner: Callable[..., Any], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> asyncio.Future[Any] | None:
        """Send a call now; the reply's future, or None when the channel is already closed."""
        try:
            fut: asyncio.Future[Any] = inner(*args, **kwargs)
        except ipc.ChannelClosed:
            return None
        return fut

    @property
    def _in_call(self) -> bool:
        """A call was in flight when the channel closed (its caller may not have resumed
        yet: the channel's EOF and the pidfd are often read in one loop iteration)."""
        return self._in_flight > 0 or self._cut_short

    async def _died(self, method: str) -> WorkerDied:
        """The error for a call its worker's end interrupted, once that end is known."""
        return WorkerDied(self.id, method, await self._status_soon())

    async def terminate(self, grace: float = 2.0) -> Status:
        """Close the channel (a worker's cue to exit cleanly), wait `grace` seconds, then kill."""
        self._asked_to_end = True
        if self.running:
            self._hang_up()
            st = await self._end_within(grace)
            if st is not None:
                return st
            self._kill_for(Outcome.KILLED, f"did not exit within {grace:g}s of "
                           "its channel closing")
        return await self.wait()

    async def wait(self) -> Status:
        st = await self._end_within(None)
        assert st is not None
        return st

    async def _status_soon(self, timeout: float = 2.0) -> Status | None:
        return await self._end_within(timeout)

    async def _end_within(self, timeout: float | None) -> Status | None:
        """The final Status, or None if `timeout` seconds pass first."""
        if self._done.done():
            return self._done.result()
        loop = self._done.get_loop()
        fut: asyncio.Future[Status | None] = loop.create_future()
        self._waiters.append(fut)
        timer = None if timeout is None else loop.call_later(timeout, _resolve, fut, None)
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def _ended(self, status: Status) -> None:
        """Called once by the supervisor with the final Status."""
        self._done.set_result(status)
        for fut in self._waiters:
            _resolve(fut, status)
        self._waiters.clear()


def _resolve(fut: asyncio.Future[Status | None], value: Status | None) -> None:
    if not fut.done():
        fut.set_result(value)

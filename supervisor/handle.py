"""WorkerHandle: the embedder's view of one worker. Made only by the Supervisor.

Like trio's Process: no public constructor; `kill()` is immediate,
`terminate()` closes the channel (the worker's cue to exit), waits a grace
period, then kills; `wait()` returns the final Status. Calls through
`handle.remote` that the worker's death interrupts raise `WorkerDied`, which
names the worker, the method and how it ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import ipc
from supervisor.process import WorkerProcess
from supervisor.sandbox import Outcome, Status

_TOKEN = object()


class WorkerDied(ipc.ChannelClosed):
    """A call could not complete because its worker ended."""

    def __init__(self, worker_id: str, method: str, status: Status | None) -> None:
        how = status.describe() if status is not None else "its channel closed"
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

        async def reply(sent: Awaitable[Any] | None) -> Any:
            try:
                if sent is None:
                    raise ipc.ChannelClosed("closed")
                return await sent
            except ipc.ChannelClosed as e:
                if isinstance(e, WorkerDied):
                    raise
                status = await handle._status_soon()
                raise WorkerDied(handle.id, name, status) from None

        def call(*args: Any, **kwargs: Any) -> Awaitable[Any]:
            # Sent now (calls leave in the order they are made); awaited later.
            try:
                sent = inner(*args, **kwargs)
            except ipc.ChannelClosed:
                sent = None
            return reply(sent)

        call.__name__ = name
        setattr(self, name, call)
        return call


class WorkerHandle:
    """A running (or finished) worker. See the module docstring."""

    id: str
    pid: int
    start_method: str
    profile: str
    channel: ipc.AsyncChannel
    interface: type[ipc.Interface] | None
    remote: Any
    _process: WorkerProcess
    _done: asyncio.Future[Status]
    _watched: tuple[int, ...]

    def __init__(self, token: object) -> None:
        if token is not _TOKEN:
            raise TypeError("WorkerHandle has no public constructor; use Supervisor.spawn()")

    @classmethod
    def _create(cls, worker_id: str, process: WorkerProcess, start_method: str, profile: str,
                loop: asyncio.AbstractEventLoop, interface: type[ipc.Interface] | None
                ) -> WorkerHandle:
        self = cls(_TOKEN)
        self.interface = interface
        self.id = worker_id
        self._process = process
        self.pid = process.pid
        self.start_method = start_method
        self.profile = profile
        self._done = loop.create_future()
        self.remote = _Remote(self)
        self._watched = ()
        return self

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
        return not self._done.done()

    def kill(self, reason: str = "killed by the embedder") -> None:
        """SIGKILL to the worker's whole sandbox now; outcome `killed` unless a cause came first."""
        self._process.kill(Outcome.KILLED, reason)

    def _kill_for(self, outcome: Outcome, reason: str) -> None:
        self._process.kill(outcome, reason)

    async def terminate(self, grace: float = 2.0) -> Status:
        """Close the channel (a worker's cue to exit cleanly), wait `grace` seconds, then kill."""
        if self.alive:
            self.channel.close()
            try:
                return await asyncio.wait_for(asyncio.shield(self._done), grace)
            except TimeoutError:
                self._process.kill(Outcome.KILLED, f"did not exit within {grace:g}s of "
                                   "its channel closing")
        return await self.wait()

    async def wait(self) -> Status:
        return await asyncio.shield(self._done)

    async def _status_soon(self, timeout: float = 2.0) -> Status | None:
        try:
            return await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except TimeoutError:
            return None

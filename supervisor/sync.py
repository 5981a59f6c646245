"""A small synchronous face for scripts: the Supervisor on its own loop in a background thread.

    with SyncSupervisor(start_method="zygote") as sup:
        w = sup.spawn(Calc, "mypkg.worker:CalcImpl")
        print(w.call("square", 12))
        pool = sup.pool(Calc, "mypkg.worker:CalcImpl", size=2)
        print(pool.call("square", 3))

Every method blocks until the loop has done the work; events and logging
are as with the async Supervisor (`sup.supervisor.subscribe(...)`). A call
given `timeout=` that runs out, or interrupted (KeyboardInterrupt), is
cancelled on the loop exactly as an asyncio caller's would be: a pool keeps
its worker busy until the reply or the call's deadline (warden.supervisor.pool).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from warden import ipc
from warden.supervisor.core import Supervisor
from warden.supervisor.handle import WorkerHandle
from warden.supervisor.pool import IfaceT, Pool
from warden.supervisor.sandbox import Status

T = TypeVar("T")
P = ParamSpec("P")


class SyncWorker:
    """Blocking wrapper of a WorkerHandle."""

    def __init__(self, owner: SyncSupervisor, handle: WorkerHandle) -> None:
        self._owner = owner
        self.handle = handle
        self.id = handle.id
        self.pid = handle.pid

    @property
    def status(self) -> Status | None:
        return self.handle.status

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        async def go() -> Any:
            return await asyncio.wait_for(getattr(self.handle.remote, method)(*args, **kwargs),
                                          timeout)
        return self._owner._run(go())

    def kill(self) -> None:
        self._owner._loop.call_soon_threadsafe(self.handle.kill)

    def terminate(self, grace: float = 2.0) -> Status:
        return self._owner._run(self.handle.terminate(grace))

    def wait(self) -> Status:
        return self._owner._run(self.handle.wait())


class SyncPool(Generic[IfaceT]):
    def __init__(self, owner: SyncSupervisor, pool: Pool[IfaceT]) -> None:
        self._owner = owner
        self.pool = pool

    @overload
    def call(self, method: Callable[Concatenate[IfaceT, ipc.Context, P], T], /,
             *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    def call(self, method: str, /, *args: Any, deadline: float | None = None,
             timeout: float | None = None, **kwargs: Any) -> Any: ...

    def call(self, method: str | Callable[..., Any], /, *args: Any, deadline: Any = None,
             timeout: Any = None, **kwargs: Any) -> Any:
        """Pool.call, blocking: `pool.call(Calc.square, 3)` (typed) or `pool.call("square", 3)`.

        deadline as there (past it the worker is killed); timeout: stop waiting
        (TimeoutError) and cancel the call, leaving its worker busy until it answers."""
        return self._owner._run(self.pool.call(method, *args, deadline=deadline, **kwargs),
                                timeout)

    def status(self) -> dict[str, Any]:
        return self.pool.status()


class SyncSupervisor:
    """Supervisor(**kwargs) driven from synchronous code (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="warden-supervisor",
                                        daemon=True)
        self.supervisor: Supervisor | None = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except BaseException:
            # Timed out or interrupted here: cancel it there, as an asyncio caller would
            # (a no-op when it already finished).
            fut.cancel()
            raise

    def __enter__(self) -> SyncSupervisor:
        self._thread.start()

        async def start() -> Supervisor:
            sup = Supervisor(**self._kwargs)
            await sup.start()
            return sup

        self.supervisor = self._run(start())
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self.supervisor is not None:
            self._run(self.supervisor.aclose())
            self.supervisor = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def spawn(self, interface: type[ipc.Interface], target: str, **kwargs: Any) -> SyncWorker:
        assert self.supervisor is not None, "use `with SyncSupervisor() as sup:`"
        return SyncWorker(self, self._run(self.supervisor.spawn(interface, target, **kwargs)))

    def pool(self, interface: type[IfaceT], target: str, **kwargs: Any) -> SyncPool[IfaceT]:
        assert self.supervisor is not None, "use `with SyncSupervisor() as sup:`"
        return SyncPool(self, self._run(self.supervisor.pool(interface, target, **kwargs)))

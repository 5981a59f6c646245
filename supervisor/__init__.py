"""warden's supervisor: runs sandboxed workers, serves them typed channels, survives them.

    import supervisor
    async with supervisor.Supervisor(start_method="zygote") as sup:
        w = await sup.spawn(MyInterface, "mypkg.worker:Impl", profile="strict")
        print(await w.remote.method(...))

See docs/supervisor.md. `supervisor.sandbox` is the single-sandbox machinery
behind `warden run`.

The public names load on first use (PEP 562), so `warden run`, which needs
none of asyncio or the ipc package, does not pay for them at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from supervisor.core import START_METHODS, SpawnError, Supervisor
    from supervisor.events import (
        BadMessageEvent,
        Event,
        Exited,
        Restarted,
        SeccompViolation,
        Started,
    )
    from supervisor.executor import BadResult, SandboxExecutor, TaskError
    from supervisor.handle import WorkerDied, WorkerHandle
    from supervisor.pool import DeadlineExceeded, Pool, PoolError, RestartPolicy
    from supervisor.protections import CapacityError
    from supervisor.sync import SyncPool, SyncSupervisor, SyncWorker

_WHERE = {
    "START_METHODS": "supervisor.core",
    "SpawnError": "supervisor.core",
    "Supervisor": "supervisor.core",
    "BadMessageEvent": "supervisor.events",
    "Event": "supervisor.events",
    "Exited": "supervisor.events",
    "Restarted": "supervisor.events",
    "SeccompViolation": "supervisor.events",
    "Started": "supervisor.events",
    "BadResult": "supervisor.executor",
    "SandboxExecutor": "supervisor.executor",
    "TaskError": "supervisor.executor",
    "WorkerDied": "supervisor.handle",
    "WorkerHandle": "supervisor.handle",
    "DeadlineExceeded": "supervisor.pool",
    "Pool": "supervisor.pool",
    "PoolError": "supervisor.pool",
    "RestartPolicy": "supervisor.pool",
    "CapacityError": "supervisor.protections",
    "SyncPool": "supervisor.sync",
    "SyncSupervisor": "supervisor.sync",
    "SyncWorker": "supervisor.sync",
}

__all__ = [
    "START_METHODS",
    "BadMessageEvent",
    "BadResult",
    "CapacityError",
    "DeadlineExceeded",
    "Event",
    "Exited",
    "Pool",
    "PoolError",
    "RestartPolicy",
    "Restarted",
    "SandboxExecutor",
    "SeccompViolation",
    "SpawnError",
    "Started",
    "Supervisor",
    "SyncPool",
    "SyncSupervisor",
    "SyncWorker",
    "TaskError",
    "WorkerDied",
    "WorkerHandle",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

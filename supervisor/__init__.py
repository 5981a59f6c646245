"""warden's supervisor: runs sandboxed workers, serves them typed channels, survives them.

    from warden import supervisor
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
    from warden.supervisor.core import START_METHODS, Supervisor
    from warden.supervisor.errors import (
        CapacityError,
        DeadlineExceeded,
        PoolError,
        SpawnError,
        SupervisorError,
    )
    from warden.supervisor.events import (
        BadMessageEvent,
        Event,
        Exited,
        Restarted,
        SeccompViolation,
        Started,
    )
    from warden.supervisor.executor import BadResult, SandboxExecutor, TaskError
    from warden.supervisor.handle import WorkerDied, WorkerHandle
    from warden.supervisor.pool import Pool, RestartPolicy
    from warden.supervisor.sync import SyncPool, SyncSupervisor, SyncWorker

_WHERE = {
    "START_METHODS": "warden.supervisor.core",
    "SpawnError": "warden.supervisor.errors",
    "SupervisorError": "warden.supervisor.errors",
    "Supervisor": "warden.supervisor.core",
    "BadMessageEvent": "warden.supervisor.events",
    "Event": "warden.supervisor.events",
    "Exited": "warden.supervisor.events",
    "Restarted": "warden.supervisor.events",
    "SeccompViolation": "warden.supervisor.events",
    "Started": "warden.supervisor.events",
    "BadResult": "warden.supervisor.executor",
    "SandboxExecutor": "warden.supervisor.executor",
    "TaskError": "warden.supervisor.executor",
    "WorkerDied": "warden.supervisor.handle",
    "WorkerHandle": "warden.supervisor.handle",
    "DeadlineExceeded": "warden.supervisor.errors",
    "Pool": "warden.supervisor.pool",
    "PoolError": "warden.supervisor.errors",
    "RestartPolicy": "warden.supervisor.pool",
    "CapacityError": "warden.supervisor.errors",
    "SyncPool": "warden.supervisor.sync",
    "SyncSupervisor": "warden.supervisor.sync",
    "SyncWorker": "warden.supervisor.sync",
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
    "SupervisorError",
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
        raise AttributeError(f"module 'warden.supervisor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

"""warden's supervisor: runs sandboxed workers, serves them typed channels, survives them.

    import supervisor
    async with supervisor.Supervisor(start_method="zygote") as sup:
        w = await sup.spawn(MyInterface, "mypkg.worker:Impl", profile="strict")
        print(await w.remote.method(...))

See docs/supervisor.md. `supervisor.sandbox` is the single-sandbox machinery
behind `warden run`.
"""

from supervisor.core import START_METHODS, SpawnError, Supervisor
from supervisor.events import BadMessageEvent, Event, Exited, Restarted, SeccompViolation, Started
from supervisor.handle import WorkerDied, WorkerHandle
from supervisor.pool import DeadlineExceeded, Pool, PoolError, RestartPolicy
from supervisor.protections import CapacityError
from supervisor.sync import SyncPool, SyncSupervisor, SyncWorker

__all__ = [
    "START_METHODS",
    "BadMessageEvent",
    "CapacityError",
    "DeadlineExceeded",
    "Event",
    "Exited",
    "Pool",
    "PoolError",
    "RestartPolicy",
    "Restarted",
    "SeccompViolation",
    "SpawnError",
    "Started",
    "Supervisor",
    "SyncPool",
    "SyncSupervisor",
    "SyncWorker",
    "WorkerDied",
    "WorkerHandle",
]

"""warden: run untrusted code and data parsers in sandboxed child processes.

    import warden

    class Parser(warden.Interface):
        @warden.call
        def parse(self, data: bytes) -> dict[str, int]: ...

    async with warden.Supervisor() as sup:
        worker = await sup.spawn(Parser, "mypkg.parser:ParserImpl", profile="python-worker")
        counts = await worker.remote.parse(b"...")

Three layers live under this namespace: `warden.profiles` (seccomp profiles and
their compiler), `warden.supervisor.sandbox` (one sandboxed process: what
`warden run` uses), `warden.ipc` (typed, validated channels) and, on top,
`warden.supervisor` (workers, pools, the executor). The names below are the
public API; each loads on first use (PEP 562), so `import warden` costs nothing
and `warden run` never imports asyncio or the ipc package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warden.ipc import (
        BadMessage,
        CallFailed,
        ChannelClosed,
        Context,
        Directory,
        Handle,
        Interface,
        IpcError,
        MemoryWriter,
        ReadFile,
        RemoteError,
        SealedMemory,
        Socket,
        WriteFile,
        call,
        message,
    )
    from warden.profiles import ProfileError, load_profile
    from warden.supervisor import (
        BadResult,
        CapacityError,
        DeadlineExceeded,
        Pool,
        PoolError,
        RestartPolicy,
        SandboxExecutor,
        SpawnError,
        Supervisor,
        SupervisorError,
        SyncPool,
        SyncSupervisor,
        SyncWorker,
        TaskError,
        WorkerDied,
        WorkerHandle,
    )
    from warden.supervisor.sandbox import (
        Outcome,
        SandboxError,
        SandboxOptions,
        SandboxSpec,
        Status,
        build_spec,
        spawn,
    )

__version__ = "0.1.0"

_WHERE = {
    **dict.fromkeys(
        ("BadMessage", "CallFailed", "ChannelClosed", "Context", "Directory", "Handle",
         "Interface", "IpcError", "MemoryWriter", "ReadFile", "RemoteError", "SealedMemory",
         "Socket", "WriteFile", "call", "message"), "warden.ipc"),
    **dict.fromkeys(("ProfileError", "load_profile"), "warden.profiles"),
    **dict.fromkeys(
        ("BadResult", "CapacityError", "DeadlineExceeded", "Pool", "PoolError",
         "RestartPolicy", "SandboxExecutor", "SpawnError", "Supervisor", "SupervisorError",
         "SyncPool", "SyncSupervisor", "SyncWorker", "TaskError", "WorkerDied", "WorkerHandle"),
        "warden.supervisor"),
    **dict.fromkeys(
        ("Outcome", "SandboxError", "SandboxOptions", "SandboxSpec", "Status", "build_spec",
         "spawn"),
        "warden.supervisor.sandbox"),
}
_SUBPACKAGES = ("errors", "ipc", "profiles", "supervisor")

__all__ = [
    "BadMessage",
    "BadResult",
    "CallFailed",
    "CapacityError",
    "ChannelClosed",
    "Context",
    "DeadlineExceeded",
    "Directory",
    "Handle",
    "Interface",
    "IpcError",
    "MemoryWriter",
    "Outcome",
    "Pool",
    "PoolError",
    "ProfileError",
    "ReadFile",
    "RemoteError",
    "RestartPolicy",
    "SandboxError",
    "SandboxExecutor",
    "SandboxOptions",
    "SandboxSpec",
    "SealedMemory",
    "Socket",
    "SpawnError",
    "Status",
    "Supervisor",
    "SupervisorError",
    "SyncPool",
    "SyncSupervisor",
    "SyncWorker",
    "TaskError",
    "WorkerDied",
    "WorkerHandle",
    "WriteFile",
    "build_spec",
    "call",
    "load_profile",
    "message",
    "spawn",
]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"warden.{name}")
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'warden' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__, *_SUBPACKAGES])

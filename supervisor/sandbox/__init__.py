"""Run a program in a Linux sandbox: namespaces, a new root, limits, an fd map, seccomp.

    from warden.profiles import load_profile
    from warden.supervisor.sandbox import build_spec, spawn

    spec = build_spec(["/bin/echo", "hi"], load_profile("default"), timeout=10)
    with spawn(spec) as box:
        ...                      # box.channel is the parent's end of fd 3
    print(box.status.outcome)    # Outcome.OK

`warden run` builds the same SandboxSpec from its options. See docs/sandbox.md.

A process that confines itself instead (the supervisor's zygote and the
workers it forks) uses the steps in `warden.supervisor.sandbox.self_confine`; see
docs/supervisor.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warden.supervisor.sandbox import self_confine
    from warden.supervisor.sandbox.child import child_setup
    from warden.supervisor.sandbox.errors import SandboxError, SetupError
    from warden.supervisor.sandbox.handle import Sandbox
    from warden.supervisor.sandbox.launch import Launch, prepare, spawn
    from warden.supervisor.sandbox.options import SandboxOptions
    from warden.supervisor.sandbox.preflight import PreflightError
    from warden.supervisor.sandbox.spec import (
        CHANNEL_FD,
        FileGrant,
        SandboxSpec,
        SpecError,
        build_spec,
    )
    from warden.supervisor.sandbox.status import Outcome, SetupFailure, Status, Violation

# The public names load on first use (PEP 562): `warden run` reads its options
# (sandbox.options) before it needs the launch machinery, and the serve config
# reads them without it.
_WHERE = {
    "self_confine": "", "child_setup": "child", "SandboxError": "errors",
    "SetupError": "errors", "Sandbox": "handle", "Launch": "launch", "prepare": "launch",
    "spawn": "launch", "SandboxOptions": "options", "PreflightError": "preflight",
    "CHANNEL_FD": "spec", "FileGrant": "spec", "SandboxSpec": "spec", "SpecError": "spec",
    "build_spec": "spec", "Outcome": "status", "SetupFailure": "status", "Status": "status",
    "Violation": "status",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if where == "":
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


__all__ = [
    "CHANNEL_FD",
    "FileGrant",
    "Launch",
    "Outcome",
    "PreflightError",
    "Sandbox",
    "SandboxError",
    "SandboxOptions",
    "SandboxSpec",
    "SetupError",
    "SetupFailure",
    "SpecError",
    "Status",
    "Violation",
    "build_spec",
    "child_setup",
    "prepare",
    "self_confine",
    "spawn",
]

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

from warden.supervisor.sandbox import self_confine
from warden.supervisor.sandbox.child import child_setup
from warden.supervisor.sandbox.errors import SandboxError, SetupError
from warden.supervisor.sandbox.handle import Sandbox
from warden.supervisor.sandbox.launch import Launch, prepare, spawn
from warden.supervisor.sandbox.options import SandboxOptions
from warden.supervisor.sandbox.preflight import PreflightError
from warden.supervisor.sandbox.spec import CHANNEL_FD, FileGrant, SandboxSpec, SpecError, build_spec
from warden.supervisor.sandbox.status import Outcome, SetupFailure, Status, Violation

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

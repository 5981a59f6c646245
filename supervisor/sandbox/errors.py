"""The sandbox layer's errors: one base, and each error also says how to react.

Every error this layer raises on purpose is a SandboxError and one of
warden.errors' reaction classes (InvalidInput: fix what you gave; Unavailable:
this host lacks a mechanism; ChildFailed: the sandbox could not start or ended
badly; OutOfCapacity: try later or raise a limit). Errors that were OSError,
ValueError or RuntimeError before keep that base, so `except OSError` callers
still catch them. The mechanism modules define their own classes on these.
"""

from __future__ import annotations

from warden.errors import ChildFailed, WardenError
from warden.supervisor.sandbox.status import Status


class SandboxError(WardenError):
    """Base of every error the sandbox layer raises on purpose."""


class SetupError(SandboxError, ChildFailed):
    """The sandbox could not be set up; `.status` is the setup_error record."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.reason)
        self.status = status

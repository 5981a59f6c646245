"""The sandbox layer's errors."""

from __future__ import annotations

from warden.supervisor.sandbox.status import Status


class SandboxError(Exception):
    """Base of errors raised by spawn()."""


class SetupError(SandboxError):
    """The sandbox could not be set up; `.status` is the setup_error record."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.reason)
        self.status = status

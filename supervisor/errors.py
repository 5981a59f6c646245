"""The supervisor layer's errors: one base, each error also the reaction class it asks for.

    except warden.supervisor.errors.SupervisorError:  # anything this layer raised on purpose
    except warden.errors.ChildFailed:     # a worker died, hung or could not start; retry
    except warden.errors.InvalidInput:    # an argument, profile or target is wrong
    except warden.errors.OutOfCapacity:   # a limit of the supervisor: try later

Each keeps the builtin base it had before (RuntimeError, ValueError, TypeError,
TimeoutError, OSError), so `except` clauses written against those still work.
Three errors live beside what they wrap, with the same bases: WorkerDied
(warden.supervisor.handle, an ipc.ChannelClosed), TaskError and BadResult
(warden.supervisor.executor, an ipc.RemoteError and an ipc.BadMessage).

This module imports nothing but warden.errors: a forked worker may use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from warden.errors import ChildFailed, InvalidInput, OutOfCapacity, Unavailable, WardenError

if TYPE_CHECKING:
    from warden.supervisor.sandbox import Status


class SupervisorError(WardenError):
    """Anything the supervisor layer (workers, zygote, pools, executor) raises on purpose."""


class InvalidArgument(SupervisorError, InvalidInput, ValueError):
    """An argument to the supervisor's API is wrong (a start method, a size, a name in use)."""


class InvalidCall(SupervisorError, InvalidInput, TypeError):
    """A call or task that cannot be sent to a worker (not a declared method, a function a
    worker cannot import, a result type that cannot be checked, arguments that do not pickle)."""


class NotRunning(SupervisorError, RuntimeError):
    """The supervisor or executor is not running (not started yet, or shut down)."""


class SpawnError(SupervisorError, RuntimeError):
    """A worker could not be started; `.status` says how it ended (setup_error, ...).

    Raised as one of its subclasses: WorkerStartFailed (the worker ended or misbehaved
    before it was ready), SpawnRefused (the request cannot be served as asked),
    SpawnUnavailable (this host lacks what the start method needs)."""

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        self.status = status


class WorkerStartFailed(SpawnError, ChildFailed):
    """The worker ended, or was killed, before it was ready; `.status` says how."""


class SpawnRefused(SpawnError, InvalidInput):
    """The spawn asks for what cannot be given (a profile the start method cannot serve, a
    start method the supervisor was not started with)."""


class SpawnUnavailable(SpawnError, Unavailable):
    """This host lacks what the start method needs (an interpreter a sandbox can bind)."""


class CapacityError(SupervisorError, OutOfCapacity, RuntimeError):
    """The supervisor refuses new work to keep its own headroom (fds, memory, workers)."""


class ZygoteError(SupervisorError, ChildFailed, RuntimeError):
    """The zygote could not be started, could not fork, or it ended."""


class PoolError(SupervisorError, RuntimeError):
    """The pool cannot take the call (closed, or stopped by its crash-loop limit)."""


class DeadlineExceeded(SupervisorError, ChildFailed, TimeoutError):
    """A call did not finish within its deadline; its worker was killed."""


class ConfineError(SupervisorError, Unavailable, OSError):
    """The worker could not be forked into its namespaces."""


class TargetEscaped(SupervisorError, ChildFailed, RuntimeError):
    """The target's import or constructor left something running outside the filter."""

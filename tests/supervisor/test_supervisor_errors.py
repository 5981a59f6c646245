"""Every error the supervisor layer raises is a SupervisorError, a warden.errors.WardenError,
and keeps the builtin base older `except` clauses catch."""

from __future__ import annotations

import pytest

from warden import errors as root
from warden import ipc
from warden.supervisor import errors
from warden.supervisor.executor import BadResult, TaskError
from warden.supervisor.handle import WorkerDied

REACTIONS = (root.InvalidInput, root.Unavailable, root.ChildFailed, root.OutOfCapacity)


@pytest.mark.parametrize(("error", "reaction", "builtin"), [
    (errors.InvalidArgument, root.InvalidInput, ValueError),
    (errors.InvalidCall, root.InvalidInput, TypeError),
    (errors.WorkerStartFailed, root.ChildFailed, RuntimeError),
    (errors.SpawnRefused, root.InvalidInput, RuntimeError),
    (errors.SpawnUnavailable, root.Unavailable, RuntimeError),
    (errors.CapacityError, root.OutOfCapacity, RuntimeError),
    (errors.ZygoteError, root.ChildFailed, RuntimeError),
    (errors.DeadlineExceeded, root.ChildFailed, TimeoutError),
    (errors.ConfineError, root.Unavailable, OSError),
    (errors.TargetEscaped, root.ChildFailed, RuntimeError),
    (WorkerDied, root.ChildFailed, ipc.ChannelClosed),
    (BadResult, root.ChildFailed, ipc.BadMessage),
])
def test_each_error_says_how_to_react(error: type[Exception], reaction: type[Exception],
                                      builtin: type[Exception]) -> None:
    assert issubclass(error, errors.SupervisorError)
    assert issubclass(error, root.WardenError)
    assert issubclass(error, reaction)
    assert issubclass(error, builtin)
    others = [r for r in REACTIONS if r is not reaction and issubclass(error, r)]
    assert not others, f"{error.__name__} is also {others}"


def test_errors_without_a_reaction_are_still_the_layers() -> None:
    for error in (errors.SpawnError, errors.PoolError, errors.NotRunning, TaskError):
        assert issubclass(error, errors.SupervisorError)
    assert issubclass(errors.SpawnError, RuntimeError)
    assert issubclass(errors.PoolError, RuntimeError)
    assert issubclass(TaskError, ipc.RemoteError)


def test_the_old_import_paths_still_name_the_same_classes() -> None:
    from warden.supervisor import core, pool, protections

    assert core.SpawnError is errors.SpawnError
    assert pool.PoolError is errors.PoolError
    assert pool.DeadlineExceeded is errors.DeadlineExceeded
    assert protections.CapacityError is errors.CapacityError


def test_a_confine_error_is_still_an_oserror_with_its_errno() -> None:
    e = errors.ConfineError(11, "clone into new user+pid namespaces failed")
    assert e.errno == 11 and isinstance(e, OSError)


def test_exit_codes_are_defined_once() -> None:
    from warden.supervisor import confine, process, worker_main

    for module in (confine, process, worker_main):
        assert module.EXIT_SETUP is root.EXIT_SETUP == 125

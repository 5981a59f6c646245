"""Every error the sandbox layer defines is a SandboxError and says how to react."""

from __future__ import annotations

import importlib
import pkgutil

import warden.supervisor.sandbox as sandbox
from warden import errors
from warden.supervisor.sandbox import SandboxError

REACTIONS = (errors.InvalidInput, errors.Unavailable, errors.ChildFailed, errors.OutOfCapacity)
SKIP: set[str] = set()


def _error_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.iter_modules(sandbox.__path__, sandbox.__name__ + "."):
        if info.name in SKIP:
            continue
        mod = importlib.import_module(info.name)
        for obj in vars(mod).values():
            if (isinstance(obj, type) and issubclass(obj, BaseException)
                    and obj.__module__ == mod.__name__ and not obj.__name__.startswith("_")):
                found.append(obj)
    return found


def test_every_sandbox_error_has_the_layer_base_and_a_reaction() -> None:
    classes = _error_classes()
    assert len(classes) >= 10
    for cls in classes:
        assert issubclass(cls, SandboxError), cls
        assert cls is SandboxError or issubclass(cls, REACTIONS), cls


def test_errors_keep_their_builtin_bases() -> None:
    from warden.supervisor.sandbox import hostpath, ids, mounts, preflight

    assert issubclass(hostpath.HostPathError, OSError)
    assert issubclass(mounts.MountError, OSError)
    assert issubclass(ids.OuterIdError, ValueError)
    assert issubclass(preflight.PreflightError, RuntimeError)
    e = ids.IdsUnavailable(11, "all ids in use")
    assert (e.errno, str(e)) == (11, "all ids in use")


def test_exit_codes_are_the_ones_warden_errors_defines() -> None:
    from warden.supervisor.sandbox import status

    assert (status.EXIT_SETUP, status.EXIT_NOT_EXECUTABLE, status.EXIT_NOT_FOUND) == \
        (errors.EXIT_SETUP, errors.EXIT_NOT_EXECUTABLE, errors.EXIT_NOT_FOUND) == (125, 126, 127)

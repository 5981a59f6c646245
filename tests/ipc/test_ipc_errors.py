"""The ipc layer's errors: one base (IpcError, under warden.errors.WardenError), each class
also the reaction class that says what the caller must do, builtin bases kept."""

from __future__ import annotations

import inspect

import pytest

from warden import errors, ipc
from warden.ipc import errors as ipc_errors

REACTIONS = {
    "BadMessage": errors.ChildFailed,
    "CutOff": errors.ChildFailed,
    "PeerError": errors.ChildFailed,
    "ChannelClosed": errors.ChildFailed,
    "InterfaceError": errors.InvalidInput,
    "FrameTooLarge": errors.InvalidInput,
}
BUILTIN = {"InterfaceError": TypeError, "FrameTooLarge": ValueError}


def error_classes() -> list[type[BaseException]]:
    return [c for _, c in inspect.getmembers(ipc_errors, inspect.isclass)
            if issubclass(c, BaseException) and c.__module__ == ipc_errors.__name__]


def test_every_ipc_error_is_an_ipc_error_under_the_root() -> None:
    assert issubclass(ipc.IpcError, errors.WardenError)
    for cls in error_classes():
        assert issubclass(cls, ipc.IpcError), cls
        assert getattr(ipc, cls.__name__) is cls  # exported from warden.ipc


@pytest.mark.parametrize(("name", "reaction"), sorted(REACTIONS.items()))
def test_each_error_says_how_to_react(name: str, reaction: type[BaseException]) -> None:
    assert issubclass(getattr(ipc, name), reaction)


@pytest.mark.parametrize(("name", "builtin"), sorted(BUILTIN.items()))
def test_builtin_bases_are_kept(name: str, builtin: type[BaseException]) -> None:
    assert issubclass(getattr(ipc, name), builtin)


def test_reasons_still_read_the_same() -> None:
    bad = ipc.BadMessage("child-1", "unknown method id 0x00000001", interface="svc.S")
    assert str(bad) == "bad message from peer 'child-1': unknown method id 0x00000001"
    cut = ipc.CutOff("child-1", "more than 64 calls in flight", limit="max_calls_in_flight")
    assert str(cut) == "peer 'child-1' cut off: more than 64 calls in flight"
    with pytest.raises(errors.ChildFailed):
        raise cut

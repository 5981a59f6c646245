"""The OS helpers the ipc layer needs, each written once (poll waits, SCM_RIGHTS, closing).

The sandbox layer has its own copy in `warden.supervisor.sandbox.lowlevel`: ipc imports
nothing of warden's but `warden.errors`, so a program that only talks over a channel does
not load the supervisor.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket
from collections.abc import Callable, Iterable

_FD_SIZE = array.array("i").itemsize
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)

Poll = Callable[[int | None], list[tuple[int, int]]]


def poller(fd: int, events: int = select.POLLIN) -> Poll:
    """A poll on `fd` for `events`, to call with a timeout in ms (0: ask, never wait).

    poll, never select: select() raises ValueError for descriptors >= 1024, which a
    supervisor holding hundreds of channels has. Keep the result to ask again cheaply.
    """
    p = select.poll()
    p.register(fd, events)
    return p.poll


def hung_up(fd: int) -> bool:
    """Whether the peer of socket `fd` has hung up (POLLHUP/POLLRDHUP now, without waiting).

    Tells a SEQPACKET end of stream from an empty datagram: both read as 0 bytes.
    """
    events = poller(fd, select.POLLIN | select.POLLRDHUP)(0)
    return bool(events and events[0][1] & (select.POLLHUP | select.POLLRDHUP))


def fds_from_ancillary(
    ancillary: Iterable[tuple[int, int, bytes]],
) -> tuple[list[int], tuple[int, int] | None]:
    """Every descriptor the SCM_RIGHTS messages carried, in order, and the (level, type) of
    the last ancillary message that was something else (None if none was).

    The caller owns every fd returned and must close each one, expected or not. A truncated
    trailing int is ignored: the kernel never sends one.
    """
    fds: list[int] = []
    foreign = None
    for level, kind, data in ancillary:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(data[: len(data) - (len(data) % _FD_SIZE)])
            fds.extend(got)
        else:
            foreign = (level, kind)
    return fds, foreign


def rights(fds: Iterable[int]) -> list[tuple[int, int, array.array[int]]]:
    """The ancillary data that passes `fds` (SCM_RIGHTS), for sendmsg."""
    return [(_SOL_SOCKET, _SCM_RIGHTS, array.array("i", fds))]


def close_all(fds: Iterable[int]) -> None:
    """Close each of `fds`, ignoring ones already gone."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

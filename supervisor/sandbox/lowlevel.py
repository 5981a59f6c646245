"""Small OS helpers the sandbox layer and the supervisor share, each written once.

Nothing here keeps state or imports the rest of warden, so a forked child may
call any of it before it execs (none of it starts a thread or takes a lock).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
from typing import Any

SECCOMP_LISTENER_LINK = "anon_inode:seccomp notify"


def wait_readable(fds: list[int], timeout: float | None) -> list[int]:
    """The fds among `fds` that are readable within `timeout` seconds (None: no limit).

    poll, never select: select() raises ValueError for descriptors >= 1024,
    which a supervisor holding hundreds of workers has. A timeout is rounded
    up to whole milliseconds, so a wait for 0.4 ms is not a busy poll(0)."""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
    return [fd for fd, _ev in p.poll(ms)]


def fds_from_ancillary(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """Every descriptor an SCM_RIGHTS message carried, in order (a truncated
    trailing int is ignored: the kernel never sends one)."""
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(int.from_bytes(payload[i:i + 4], "little", signed=True)
                       for i in range(0, usable, 4))
    return fds


def recv_with_fds(sock: socket.socket, bufsize: int, max_fds: int) -> tuple[bytes, list[int]]:
    """One message and the descriptors it carried (room for `max_fds`; the caller
    owns and must close every fd returned, expected or not)."""
    data, ancillary, _flags, _addr = sock.recvmsg(bufsize, socket.CMSG_SPACE(4 * max_fds))
    return data, fds_from_ancillary(ancillary)


def close_all(fds: list[int]) -> None:
    """Close each of `fds`, ignoring ones already gone."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def single_threaded() -> bool:
    """True when this process has exactly one thread (fork and unshare(CLONE_NEWUSER)
    need it; False when /proc cannot tell)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def is_seccomp_listener(fd: int) -> bool:
    """True when `fd` is a seccomp user-notification listener (what a child hands
    over as one is checked, never assumed)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == SECCOMP_LISTENER_LINK
    except OSError:
        return False


class NoPublicConstructor(type):
    """Metaclass for objects only a factory may make (trio's pattern): calling the
    class raises TypeError naming the factory; the factory calls `cls._create(...)`."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        factory = getattr(cls, "_factory_name", "its factory")
        raise TypeError(f"{cls.__name__} has no public constructor; use {factory}")

    def _create(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **kwargs)

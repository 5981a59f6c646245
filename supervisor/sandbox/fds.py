"""The child's descriptor table: exactly the map {child_fd: source}, everything else closed.

The parent resolves every source to one of its own fds (caller fds, files it
opened with its own rights, its end of nothing: the child's channel end) and
hands the child a list of (target, source) pairs. In the child, every source
is first copied above the highest target (so no dup2 overwrites a source
that is still needed), then each copy is dup2'ed onto its target without
close-on-exec, and every other fd is closed with close_range, except the
setup socket, which is close-on-exec and vanishes at exec.
"""

from __future__ import annotations

import fcntl
import os

from supervisor.sandbox import _sys

_OPEN_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "rw": os.O_RDWR | os.O_CREAT,
    "a": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
}


class FdError(OSError):
    """A descriptor could not be opened (parent) or installed (child)."""


def open_grant(path: str, mode: str) -> int:
    """Open a --file grant with the parent's rights (close-on-exec in the parent)."""
    try:
        return os.open(path, _OPEN_FLAGS[mode] | os.O_CLOEXEC | os.O_NOCTTY, 0o644)
    except OSError as e:
        raise FdError(e.errno or 0, f"--file {path}:{mode}: {os.strerror(e.errno or 0)}") \
            from None


def install(pairs: tuple[tuple[int, int], ...], keep: int) -> int:
    """Make the fd table exactly `pairs` plus `keep`; returns keep's new number."""
    top = max(t for t, _ in pairs) + 1
    copies = [(t, fcntl.fcntl(s, fcntl.F_DUPFD_CLOEXEC, top)) for t, s in pairs]
    keep_copy = fcntl.fcntl(keep, fcntl.F_DUPFD_CLOEXEC, top)
    for target, copy in copies:
        os.dup2(copy, target, inheritable=True)
    # Park the setup socket right above the targets, then close everything else.
    os.dup2(keep_copy, top, inheritable=False)
    targets = sorted(t for t, _ in pairs)
    prev = -1
    for t in targets:
        _sys.close_range(prev + 1, t - 1)
        prev = t
    _sys.close_range(prev + 1, top - 1)
    _sys.close_range(top + 1, 0xFFFFFFFF)
    return top

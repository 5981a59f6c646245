"""The child's descriptor table: exactly the map {child_fd: source}, everything else closed.

The parent resolves every source to one of its own fds (caller fds, files it
opened with its own rights, its end of nothing: the child's channel end) and
hands the child a list of (target, source) pairs. In the child, every source
is first copied above the highest target (so no dup2 overwrites a source
that is still needed), then each copy is dup2'ed onto its target without
close-on-exec, and every other fd is closed with close_range, except the
sandbox's own setup and status descriptors, which are close-on-exec and
vanish at the workload's exec.
"""

from __future__ import annotations

import fcntl
import os

from warden.errors import InvalidInput
from warden.supervisor.sandbox import _sys, hostpath
from warden.supervisor.sandbox.errors import SandboxError

_OPEN_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "rw": os.O_RDWR | os.O_CREAT,
    "a": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
}
MODES = tuple(_OPEN_FLAGS)
# What a user may add after the mode: accept a FIFO or a device (refused by
# default, see hostpath), or follow symbolic links in the path.
GRANT_OPTIONS = ("fifo", "device", "follow")


class FdError(SandboxError, InvalidInput, OSError):
    """A descriptor could not be opened (parent) or installed (child)."""


def parse_grant(text: str) -> tuple[str, str, tuple[str, ...]]:
    """'PATH[:r|w|rw|a][:fifo][:device][:follow]' -> (absolute path, mode, options).

    Suffixes are read from the right, so a path may itself hold colons as long
    as it does not end in one of these words."""
    path, options = text, list[str]()
    while True:
        head, sep, tail = path.rpartition(":")
        if not sep or tail not in GRANT_OPTIONS or tail in options:
            break
        path, options = head, [tail, *options]
    mode = "r"
    head, sep, tail = path.rpartition(":")
    if sep and tail in MODES:
        path, mode = head, tail
    return os.path.abspath(path), mode, tuple(options)


def parent_open_grant(path: str, mode: str, options: tuple[str, ...] = ()) -> int:
    """Open a --file grant with the parent's rights (close-on-exec in the parent).

    Through the host-path rule: no link followed (unless "follow"), never
    blocking, only a regular file (unless "fifo"/"device"); "w" truncates
    only once the file is known to be a regular file."""
    spelled = ":".join((path, mode, *options))
    return hostpath.open_file(
        path, _OPEN_FLAGS[mode], f"--file {spelled}", follow="follow" in options, create_mode=0o644,
        kinds=[k for k in options if k != "follow"],
        kind_hint=f" (add :{{kind}}, as in --file {path}:{mode}:{{kind}}, to accept one)",
        follow_hint=f", or add :follow (--file {path}:{mode}:follow) if every link on "
                    "the way is yours")


def child_install(pairs: tuple[tuple[int, int], ...], keep: tuple[int, ...]) -> tuple[int, ...]:
    """Make the fd table exactly `pairs` plus `keep` (close-on-exec, parked right
    above the targets); returns keep's new numbers."""
    top = max(t for t, _ in pairs) + 1
    # Copies go above both the targets and the parking slots, so no dup2 below
    # overwrites a copy that is still to be used.
    base = top + len(keep)
    copies = [(t, fcntl.fcntl(s, fcntl.F_DUPFD_CLOEXEC, base)) for t, s in pairs]
    keep_copies = [fcntl.fcntl(k, fcntl.F_DUPFD_CLOEXEC, base) for k in keep]
    for target, copy in copies:
        os.dup2(copy, target, inheritable=True)
    parked = tuple(range(top, top + len(keep)))
    for number, copy in zip(parked, keep_copies, strict=True):
        os.dup2(copy, number, inheritable=False)
    targets = sorted(t for t, _ in pairs)
    prev = -1
    for t in targets:
        _sys.close_range(prev + 1, t - 1)
        prev = t
    _sys.close_range(prev + 1, top - 1)
    _sys.close_range(top + len(keep), 0xFFFFFFFF)
    return parked


def child_close_all_but(keep: set[int]) -> None:
    """Close every descriptor but `keep` (close_range around each kept one)."""
    prev = -1
    for fd in sorted(keep):
        _sys.close_range(prev + 1, fd - 1)
        prev = fd
    _sys.close_range(prev + 1, 0xFFFFFFFF)


def child_lowest_free() -> int:
    """The number the next new descriptor gets (where the workload's seccomp
    listener lands in the table it shares with the init)."""
    fd = os.dup(0)
    os.close(fd)
    return fd

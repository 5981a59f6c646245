"""Hiding the supervisor's command line and environment from whatever a sandbox can read.

A sandbox's init, a zygote worker and a `fork` worker start as forks of
another process (the supervisor, `warden run`, the zygote). The kernel
shows a process's /proc/PID/cmdline and /proc/PID/environ straight from its
own memory, the ranges mm->arg_start..arg_end and env_start..env_end that
execve filled: after a fork those are the parent's strings (`--api-token=…`,
`--env KEY=secret`, host paths, the whole environment). cmdline is readable
by every process that can see the pid (no ptrace check), so a workload read
its init's. `child_hide_parent_argv()` overwrites both ranges in the calling
process's copy (copy-on-write: the parent's own memory is untouched),
leaving a short title for ps.

The ranges are read from /proc/self/stat once, when this module is
imported in the parent: a fork has the same layout, and the child may by
then have no /proc of the parent's to read. python-prctl's set_proctitle
overwrites only the argv range (and needs Py_GetArgcArgv's view of it), so
this does the two memsets itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

from warden.supervisor.sandbox import _sys

__all__ = ["child_hide_parent_argv", "child_title"]


def _ranges() -> tuple[int, int, int, int] | None:
    """(arg_start, arg_end, env_start, env_end) of this process, from /proc/self/stat."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces and parentheses) start
    # at field 3; arg_start..env_end are fields 48-51 (proc(5)).
    fields = stat.rsplit(b")", 1)[-1].split()
    try:
        arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    except ValueError:
        return None
    if not (0 < arg_start <= arg_end and 0 < env_start <= env_end):
        return None
    return arg_start, arg_end, env_start, env_end


_RANGES = _ranges()
_PID = os.getpid()


def child_hide_parent_argv(title: bytes) -> None:
    """In a fresh fork: replace the inherited argv and environ strings with `title`.

    /proc/PID/cmdline then reads `title` followed by NULs, /proc/PID/environ
    only NULs. Never raises: with no /proc at import time it does nothing.
    """
    ranges = _RANGES if os.getpid() != _PID else None  # never the parent's own
    if ranges is None:
        return
    arg_start, arg_end, env_start, env_end = ranges
    ctypes.memset(arg_start, 0, arg_end - arg_start)
    ctypes.memset(env_start, 0, env_end - env_start)
    # The last byte of the argv range stays NUL: the kernel then shows exactly
    # that range, not the setproctitle(3) convention of reading on into environ.
    keep = max(0, min(len(title), arg_end - arg_start - 1))
    ctypes.memmove(arg_start, title, keep)


def child_title(name: bytes) -> None:
    """In a fresh fork: what ps shows for it, its name (comm, 15 bytes) and its
    argv, which would otherwise be the caller's (the supervisor's command line)."""
    buf = ctypes.create_string_buffer(name[:15])
    with contextlib.suppress(OSError):
        _sys.prctl(_sys.PR_SET_NAME, ctypes.addressof(buf))
    child_hide_parent_argv(name)

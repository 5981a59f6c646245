"""The confinement steps a process applies to itself, for workers made without spawn().

`spawn()` confines a program from the outside. A zygote, and the workers it
(or the `fork` start method) forks, confine themselves instead: they clone
into their own namespaces, arm the parent-death signal, close what they
must not hold, drop capabilities and set no_new_privs before loading their
seccomp filter. These are those steps, each one named for what it does, so
that code outside this package never reaches into its private syscall
wrappers. Each raises OSError (caps steps: caps.CapsError, an OSError) with
the errno on failure.
"""

from __future__ import annotations

import signal

from supervisor.sandbox import _sys, caps

__all__ = [
    "clear_capabilities",
    "close_fds",
    "fork_into_new_namespaces",
    "is_dumpable",
    "set_dumpable",
    "set_no_new_privs",
    "set_parent_death_signal",
]

_PR_GET_DUMPABLE = 3
_NEW_USER_AND_PID = _sys.CLONE_NEWUSER | _sys.CLONE_NEWPID | signal.SIGCHLD


def fork_into_new_namespaces(*, as_sibling: bool = False) -> int:
    """Fork into a new user namespace and a new PID namespace (the child is its pid 1).

    Returns 0 in the child and the child's pid in the caller, like os.fork().
    It is a raw clone(2): CPython's fork hooks do not run, so call it only
    from a single-threaded process. `as_sibling` (CLONE_PARENT): the child
    becomes a child of the caller's parent, which then reaps it.
    """
    return _sys.clone(_NEW_USER_AND_PID | (_sys.CLONE_PARENT if as_sibling else 0))


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent (thread) dies.

    The caller must check afterwards that the parent is still alive (its
    pidfd not readable): a parent that died before this call sends nothing.
    """
    _sys.prctl(_sys.PR_SET_PDEATHSIG, sig)


def set_dumpable(dumpable: bool) -> None:
    """PR_SET_DUMPABLE: a non-dumpable process leaves no core dump and cannot be
    ptraced, nor its /proc/PID/mem read, by other processes of the same uid."""
    _sys.prctl(_sys.PR_SET_DUMPABLE, int(dumpable))


def is_dumpable() -> bool:
    return bool(_sys.prctl(_PR_GET_DUMPABLE))


def close_fds(first: int, last: int = 0xFFFFFFFF) -> None:
    """Close every descriptor numbered first..last (close_range(2), a loop before 5.9)."""
    _sys.close_range(first, last)


def clear_capabilities() -> None:
    """Empty the permitted, effective and inheritable sets and the ambient set.

    The bounding set is left as is: with no_new_privs set and an unmapped
    uid, no exec can raise capabilities again.
    """
    caps.clear_capabilities()


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: no exec can gain privilege (setuid bits and file
    capabilities are inert); required to load a seccomp filter unprivileged."""
    caps.no_new_privs()

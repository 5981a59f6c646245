"""Landlock on top of the mount namespace: access rights per mounted path, kernel-checked.

The mount namespace decides what exists; Landlock decides, path by path,
what may be done there, so a bind cannot be escaped through a path the mount
namespace missed (a magic link, a submount, a later mount). Read-only binds
get read/execute rights, writable binds and tmpfs mounts get full rights,
/proc and /dev get read/write of files, and "/" itself only directory
listing. With ABI 6 and later the child is also scoped: no abstract unix
socket or signal reaches a process outside its domain. The ABI is probed;
a kernel without Landlock gets none (the status records abi 0).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
from collections.abc import Sequence

from warden.errors import ChildFailed
from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.errors import SandboxError

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

READ = READ_FILE | READ_DIR | EXECUTE
ALL_ABI1 = (EXECUTE | WRITE_FILE | READ_FILE | READ_DIR | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR
            | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO | MAKE_BLOCK | MAKE_SYM)


class LandlockError(SandboxError, ChildFailed, OSError):
    """Landlock refused a ruleset, a rule or the restriction."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def parent_abi() -> int:
    """The kernel's Landlock ABI (0 when unavailable or disabled)."""
    try:
        return _sys.syscall("landlock_create_ruleset", None, ctypes.c_size_t(0),
                            ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except OSError:
        return 0


abi_version = parent_abi  # the name the supervisor's confinement knows it by


def parent_rules(binds: Sequence[tuple[str, bool]], tmpfs: Sequence[str]) \
        -> tuple[tuple[bytes, int], ...]:
    """The sandbox's rules [(path, rights)] for child_ruleset(): everything readable,
    each bind (dest, writable) as bound, each tmpfs dest, /tmp and /dev/shm writable, /proc
    and /dev readable and writable but not executable."""
    rules: list[tuple[bytes, int]] = [(b"/", READ_DIR)]
    for dest, writable in binds:
        rules.append((os.fsencode(dest), FULL if writable else READ))
    for dest in tmpfs:
        rules.append((os.fsencode(dest), FULL))
    rules.append((b"/tmp", FULL))
    rules.append((b"/dev/shm", FULL))
    rules.append((b"/proc", READ_FILE | READ_DIR | WRITE_FILE))
    rules.append((b"/dev", READ_FILE | READ_DIR | WRITE_FILE))
    return tuple(rules)


def handled_fs(abi: int) -> int:
    h = ALL_ABI1
    if abi >= 2:
        h |= REFER
    if abi >= 3:
        h |= TRUNCATE
    return h


def fd_rights(fd: int) -> int:
    """The rights reopening `fd` by path (/dev/fd/N, /proc/self/fd/N, /dev/stdin) may
    have: what the fd itself grants, for a regular file only (0 for anything else).

    Read for a readable fd; write (and truncate, which the fd allows anyway) for a
    writable one unless it is append-only: a reopen could drop O_APPEND and
    overwrite what the grant only let the program add to."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return 0
    if flags & os.O_PATH:  # it grants no access of its own
        return 0
    acc = flags & os.O_ACCMODE
    rights = READ_FILE if acc in (os.O_RDONLY, os.O_RDWR) else 0
    if acc in (os.O_WRONLY, os.O_RDWR) and not flags & os.O_APPEND:
        rights |= WRITE_FILE | TRUNCATE
    return rights


def child_ruleset(abi: int, rules: Sequence[tuple[bytes, int]], handle_fs: bool = True,
                  fds: Sequence[int] = ()) -> int:
    """A ruleset fd (close-on-exec) for `rules` [(path, rights)], resolved in this mount
    namespace; `child_restrict()` applies it. Paths that do not exist are skipped.
    `handle_fs=False`: a ruleset for the scopes alone (ABI 6), leaving file access as is.

    `fds`: the descriptors handed to the program; each that is a regular file gets
    a rule of its own on that one file (the fd is the rule's parent_fd), with the
    rights of fd_rights(), so a program can reopen it by path. The rule covers that
    inode alone: nothing else in the file's host directory becomes reachable."""
    handled = handled_fs(abi) if handle_fs else 0
    attr = _RulesetAttr(handled, 0, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else (16 if abi >= 4 else 8)
    rfd = _sys.syscall("landlock_create_ruleset", ctypes.byref(attr), ctypes.c_size_t(size),
                       ctypes.c_uint32(0))
    try:
        for path, rights in rules:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                is_dir = stat.S_ISDIR(os.fstat(pfd).st_mode)  # the object opened, not the path
                allowed = rights & handled
                if not is_dir:
                    allowed &= EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE
                pb = _PathBeneath(allowed, pfd)
                _sys.syscall("landlock_add_rule", ctypes.c_int(rfd),
                             ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(pb), ctypes.c_uint32(0))
            finally:
                os.close(pfd)
        for fd in fds if handle_fs else ():
            allowed = fd_rights(fd) & handled
            if allowed:
                pb = _PathBeneath(allowed, fd)
                _sys.syscall("landlock_add_rule", ctypes.c_int(rfd),
                             ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(pb), ctypes.c_uint32(0))
    except OSError as e:
        os.close(rfd)
        raise LandlockError(e.errno or errno.EIO, str(e)) from None
    return rfd


def child_restrict(ruleset_fd: int) -> None:
    """Enter the ruleset's domain (no_new_privs must be set); one syscall, for the workload."""
    try:
        _sys.syscall("landlock_restrict_self", ctypes.c_int(ruleset_fd), ctypes.c_uint32(0))
    except OSError as e:
        raise LandlockError(e.errno or errno.EIO, str(e)) from None


FULL = ALL_ABI1 & ~(MAKE_CHAR | MAKE_BLOCK) | REFER | TRUNCATE

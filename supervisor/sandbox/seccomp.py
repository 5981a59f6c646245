"""Loading the compiled seccomp filter in the child, last, right before exec.

The filter arrives as raw `struct sock_filter[]` bytes compiled in the parent.
When it reports kill actions through user-notify, the child loads it with
SECCOMP_FILTER_FLAG_NEW_LISTENER; the listener lands in the descriptor table
the workload still shares with its init (see child.py), which hands it to
the supervisor after the exec. With it goes SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
(Linux 5.19): once the supervisor has received a refused call, the caller's
own signals no longer interrupt its wait, only the supervisor's kill ends it
(see notify.py for the time before it is received, and how a call withdrawn
then is still seen). A kernel without the flag
refuses it with EINVAL; the filter is then loaded without it, and the
sandbox's status names that in its `weakened` list.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import struct

from warden.errors import ChildFailed
from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.errors import SandboxError

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 1 << 4
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5
RET_ACTION_FULL = 0xFFFF0000
RET_USER_NOTIF = 0x7FC00000

_BPF_RET_K = 0x06
_INSN = struct.Struct("<HBBI")
_MAX_INSNS = 4096


class SeccompError(SandboxError, ChildFailed, OSError):
    """Loading the filter failed (the kernel's errno is kept)."""


def problem(bpf: bytes) -> str | None:
    """Why the kernel would refuse this program outright, or None."""
    if not bpf or len(bpf) % _INSN.size:
        return "not a whole number of 8-byte BPF instructions"
    if len(bpf) // _INSN.size > _MAX_INSNS:
        return f"{len(bpf) // _INSN.size} instructions (the kernel takes at most {_MAX_INSNS})"
    return None


def _insns(data: bytes) -> list[tuple[int, int, int, int]]:
    return [_INSN.unpack_from(data, i) for i in range(0, len(data), _INSN.size)]


def allows_execve(bpf: bytes) -> bool | None:
    """Whether the filter lets execve through (None: no BPF interpreter to ask).

    The filter is loaded right before exec, so a profile that refuses execve
    can start nothing; and a refusal reported through user-notify would wait
    for a listener that only exists after the exec."""
    try:
        from warden.profiles.bpf import evaluate
    except ImportError:
        return None
    ret = int(evaluate(bpf, _sys.NR["execve"], (0,) * 6, arch=_sys.AUDIT_ARCH))
    return (ret & RET_ACTION_FULL) == 0x7FFF0000


def uses_notify(bpf: bytes) -> bool:
    """True if some path of the filter returns SECCOMP_RET_USER_NOTIF."""
    return any(code == _BPF_RET_K and (k & RET_ACTION_FULL) == RET_USER_NOTIF
               for code, _jt, _jf, k in _insns(bpf))


WEAKENED_WAIT_KILLABLE = ("seccomp wait-killable receive (this kernel has none: a refused call "
                          "the supervisor has read can still be interrupted by the sandbox's "
                          "own signals; it is reported all the same)")


def wait_killable_supported() -> bool:
    """Whether this kernel takes SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (Linux 5.19)."""
    # "6.18.44-fc-v857": the leading digits of the first two fields.
    fields = [*os.uname().release.split("."), "0"][:2]
    major, minor = (int("".join(itertools.takewhile(str.isdigit, f)) or 0) for f in fields)
    return (major, minor) >= (5, 19)


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


class PreparedFilter:
    """The filter and the calls around it, built before the child's last steps."""

    def __init__(self, bpf: bytes, listener: bool, all_threads: bool = False) -> None:
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _Fprog(len(bpf) // _INSN.size, ctypes.cast(self._buf, ctypes.c_char_p))
        self.listener = listener
        self._flags = (SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
                       if listener else 0)
        if all_threads:
            # Every thread of the process gets the filter, not only the caller: a thread
            # started before it (by code that ran first) would otherwise run unfiltered.
            # TSYNC_ESRCH (Linux 5.7) lets TSYNC go with a listener; a thread that cannot
            # be synchronised makes the load fail (ESRCH), never half-apply.
            self._flags |= SECCOMP_FILTER_FLAG_TSYNC | (
                SECCOMP_FILTER_FLAG_TSYNC_ESRCH if listener else 0)
        self._syscall = _sys.libc.syscall
        self._nr_seccomp = ctypes.c_long(_sys.NR["seccomp"])

    def load(self) -> int:
        """Install the filter; returns the listener fd (or 0). Raises SeccompError."""
        ret = self._load(self._flags)
        if ret < 0 and ctypes.get_errno() == errno.EINVAL and \
                self._flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV:
            # Before Linux 5.19: the same listener, without the killable wait.
            ret = self._load(self._flags & ~SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
        if ret < 0:
            err = ctypes.get_errno()
            raise SeccompError(err, "seccomp(SECCOMP_SET_MODE_FILTER)")
        return ret

    def _load(self, flags: int) -> int:
        return int(self._syscall(self._nr_seccomp, ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                                 ctypes.c_uint(flags), ctypes.byref(self._prog)))


def child_prepare(bpf: bytes, listener: bool) -> PreparedFilter:
    """In the init, before the workload is forked: the load, ready to be one call."""
    return PreparedFilter(bpf, listener)


def child_load(filt: PreparedFilter) -> None:
    """In the workload, last before exec: the filter (its listener, if any, lands in
    the descriptor table the workload still shares with the init)."""
    filt.load()

"""Loading the compiled seccomp filter in the child, last, right before exec.

The filter arrives as raw `struct sock_filter[]` bytes compiled in the parent.
When it reports kill actions through user-notify, the child loads it with
SECCOMP_FILTER_FLAG_NEW_LISTENER; the listener lands in the descriptor table
the workload still shares with its init (see launcher.py), which hands it to
the supervisor after the exec.
"""

from __future__ import annotations

import ctypes
import struct

from supervisor.sandbox import _sys

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
RET_ACTION_FULL = 0xFFFF0000
RET_USER_NOTIF = 0x7FC00000

_BPF_RET_K = 0x06
_INSN = struct.Struct("<HBBI")
_MAX_INSNS = 4096


class SeccompError(OSError):
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
        from profiles.bpf import evaluate
    except ImportError:
        return None
    ret = int(evaluate(bpf, _sys.NR["execve"], (0,) * 6, arch=_sys.AUDIT_ARCH))
    return (ret & RET_ACTION_FULL) == 0x7FFF0000


def uses_notify(bpf: bytes) -> bool:
    """True if some path of the filter returns SECCOMP_RET_USER_NOTIF."""
    return any(code == _BPF_RET_K and (k & RET_ACTION_FULL) == RET_USER_NOTIF
               for code, _jt, _jf, k in _insns(bpf))


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


class PreparedFilter:
    """The filter and the calls around it, built before the child's last steps."""

    def __init__(self, bpf: bytes, listener: bool) -> None:
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _Fprog(len(bpf) // _INSN.size, ctypes.cast(self._buf, ctypes.c_char_p))
        self.listener = listener
        self._flags = SECCOMP_FILTER_FLAG_NEW_LISTENER if listener else 0
        self._syscall = _sys.libc.syscall
        self._nr_seccomp = ctypes.c_long(_sys.NR["seccomp"])

    def load(self) -> int:
        """Install the filter; returns the listener fd (or 0). Raises SeccompError."""
        ret = int(self._syscall(self._nr_seccomp, ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                                ctypes.c_uint(self._flags), ctypes.byref(self._prog)))
        if ret < 0:
            err = ctypes.get_errno()
            raise SeccompError(err, "seccomp(SECCOMP_SET_MODE_FILTER)")
        return ret

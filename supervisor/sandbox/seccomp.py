"""Loading the compiled seccomp filter in the child, last, right before exec.

The filter arrives as raw `struct sock_filter[]` bytes compiled in the parent.
When it reports kill actions through user-notify, the child loads it with
SECCOMP_FILTER_FLAG_NEW_LISTENER and the supervisor takes the listener fd
out of the child with pidfd_getfd(2). To know when to take it, the filter is
prefixed with a handshake: one marker call (getppid with a magic argument)
that the filter always sends to the listener. The child makes that call right
after loading; it blocks until the supervisor, now holding the listener,
answers it with a magic value; then the child execs. The prefix only ever
adds a notify result, never an allow, so it cannot weaken the profile; after
the handshake the marker call counts as a violation like any other notify.
"""

from __future__ import annotations

import ctypes
import struct

from supervisor.sandbox import _sys

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
RET_ACTION_FULL = 0xFFFF0000
RET_USER_NOTIF = 0x7FC00000

HANDSHAKE_ARG = 0x77617264  # "ward"
HANDSHAKE_REPLY = 0x5741  # what getppid() returns to the child when the supervisor answers

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06
_INSN = struct.Struct("<HBBI")
_MAX_INSNS = 4096


class SeccompError(OSError):
    """Loading the filter failed (the kernel's errno is kept)."""


def _insns(data: bytes) -> list[tuple[int, int, int, int]]:
    return [_INSN.unpack_from(data, i) for i in range(0, len(data), _INSN.size)]


def uses_notify(bpf: bytes) -> bool:
    """True if some path of the filter returns SECCOMP_RET_USER_NOTIF."""
    return any(code == _BPF_RET_K and (k & RET_ACTION_FULL) == RET_USER_NOTIF
               for code, _jt, _jf, k in _insns(bpf))


def with_handshake(bpf: bytes) -> bytes:
    """Prefix `bpf` with the handshake rule (see module docstring)."""
    nr = _sys.NR["getppid"]
    prefix = [
        (_BPF_LD_W_ABS, 0, 0, 4),                 # A = seccomp_data.arch
        (_BPF_JEQ_K, 0, 5, _sys.AUDIT_ARCH),      # foreign arch -> the profile decides
        (_BPF_LD_W_ABS, 0, 0, 0),                 # A = seccomp_data.nr
        (_BPF_JEQ_K, 0, 3, nr),
        (_BPF_LD_W_ABS, 0, 0, 16),                # A = low word of args[0] (little endian)
        (_BPF_JEQ_K, 0, 1, HANDSHAKE_ARG),
        (_BPF_RET_K, 0, 0, RET_USER_NOTIF),
    ]
    out = b"".join(_INSN.pack(*i) for i in prefix) + bpf
    if len(out) // _INSN.size > _MAX_INSNS:
        raise SeccompError(7, f"seccomp filter has {len(out) // 8} instructions "
                              f"(kernel limit {_MAX_INSNS})")
    return out


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
        self._nr_getppid = ctypes.c_long(_sys.NR["getppid"])
        self._arg = ctypes.c_ulong(HANDSHAKE_ARG)

    def load(self) -> int:
        """Install the filter; returns the listener fd (or 0). Raises SeccompError."""
        ret = int(self._syscall(self._nr_seccomp, ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                                ctypes.c_uint(self._flags), ctypes.byref(self._prog)))
        if ret < 0:
            err = ctypes.get_errno()
            raise SeccompError(err, "seccomp(SECCOMP_SET_MODE_FILTER)")
        return ret

    def handshake(self) -> bool:
        """Block until the supervisor holds the listener; False if it never answered."""
        return int(self._syscall(self._nr_getppid, self._arg)) == HANDSHAKE_REPLY

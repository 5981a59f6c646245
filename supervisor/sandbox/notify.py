"""The supervisor's end of seccomp user-notify: the kernel's own report of a refused call.

The child's filter turns kill actions into SECCOMP_RET_USER_NOTIF. The
calling thread then blocks in the kernel while the supervisor reads, from
this listener, the syscall number, architecture and arguments the kernel
recorded. The supervisor records them as a `seccomp_violation` and kills the
sandbox; the call is never answered, so it never runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
from typing import NamedTuple

from supervisor.sandbox.status import Violation

_NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, nr, arch, ip, args[6]
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100

_X32_BIT = 0x40000000
_ARCH_NAMES = {0xC000003E: "x86_64", 0x40000003: "i386", 0xC00000B7: "aarch64",
               0x40000028: "arm"}


class NotifyError(OSError):
    """The listener could not be taken or read."""


class Notification(NamedTuple):
    id: int
    pid: int
    nr: int
    arch: int
    args: tuple[int, ...]

    def violation(self) -> Violation:
        arch_name = _ARCH_NAMES.get(self.arch, hex(self.arch))
        token = self.arch
        if self.arch == 0xC000003E and self.nr & _X32_BIT:
            arch_name, token = "x32", 0x4000003E
        return Violation(syscall=syscall_name(token, self.nr), nr=self.nr, arch=arch_name,
                         args=self.args, pid=self.pid)


def syscall_name(arch_token: int, nr: int) -> str:
    """Name of syscall `nr` on `arch_token` (libseccomp's table), or 'unknown(NR)'."""
    try:
        import pyseccomp

        name = pyseccomp.resolve_syscall(arch_token, nr)
        return name.decode() if isinstance(name, bytes) else str(name)
    except (ValueError, OSError, ImportError):
        return f"unknown({nr})"


class Listener:
    """A seccomp notify fd held by the supervisor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    def state(self) -> str:
        """'pending' (a notification waits), 'hup' (no process uses the filter) or 'idle'."""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        ev = p.poll(0)
        if not ev:
            return "idle"
        if ev[0][1] & select.POLLIN:
            return "pending"
        return "hup"

    def receive(self) -> Notification | None:
        """One pending notification, or None if there is none (or it was cancelled)."""
        buf = bytearray(_NOTIF.size)
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.ENOENT, errno.EINTR):
                return None
            raise NotifyError(e.errno or 0, f"reading the seccomp listener: {e.strerror}") \
                from None
        nid, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(buf)
        return Notification(nid, pid, nr, arch, tuple(args))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

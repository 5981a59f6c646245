"""The seccomp user-notification calls the transparent broker answers with, and
reading a caller's memory. Parent, outside the sandbox, with the supervisor's
privilege; each wrapper raises OSError with the kernel's errno.

struct layouts and ioctl numbers from <linux/seccomp.h>:
  seccomp_notif        id u64, pid u32, flags u32, data{nr i32, arch u32, ip u64, args u64[6]}
  seccomp_notif_resp   id u64, val s64, error s32, flags u32
  seccomp_notif_addfd  id u64, flags u32, srcfd u32, newfd u32, newfd_flags u32
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct

from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.notify import SECCOMP_IOCTL_NOTIF_RECV, Notification

# The one copy of each, re-exported for the broker's modules:
from warden.supervisor.sandbox.notify import id_valid as id_valid
from warden.supervisor.sandbox.notify import read_memory as read_memory
from warden.supervisor.sandbox.notify import read_string as read_string
from warden.supervisor.sandbox.notify import respond as respond

SECCOMP_IOCTL_NOTIF_ADDFD = 0x40182103
SECCOMP_ADDFD_FLAG_SETFD = 1
SECCOMP_ADDFD_FLAG_SEND = 2

_NOTIF = struct.Struct("=QIIiIQ6Q")
_ADDFD = struct.Struct("=QIIII")
_NR_PIDFD_GETFD = 438
_PAGE = mmap.PAGESIZE


def receive(fd: int) -> Notification | None:
    """One SECCOMP_IOCTL_NOTIF_RECV; None when the notification was withdrawn (ENOENT)."""
    buf = bytearray(_NOTIF.size)
    while True:
        try:
            fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
        except InterruptedError:
            continue
        except FileNotFoundError:
            return None
        nid, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(buf)
        return Notification(nid, pid, nr, arch, tuple(args))


def add_fd(fd: int, nid: int, src: int, *, cloexec: bool, send: bool = False,
           target: int | None = None) -> int | None:
    """Install a copy of our `src` in the caller's table (at `target` if given,
    replacing what is there); with `send`, the caller's call returns that fd number
    at once (no separate answer: the install and the answer are one step).
    Returns the fd number in the caller, or None when `nid` was withdrawn."""
    flags = (SECCOMP_ADDFD_FLAG_SEND if send else 0) | (
        SECCOMP_ADDFD_FLAG_SETFD if target is not None else 0)
    buf = bytearray(_ADDFD.pack(nid, flags, src, target or 0, os.O_CLOEXEC if cloexec else 0))
    try:
        return int(fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_ADDFD, buf, True))
    except FileNotFoundError:
        return None


def pidfd_getfd(pidfd: int, target: int) -> int:
    """Our copy (close-on-exec) of fd `target` of the process `pidfd` refers to."""
    ret = int(_sys.libc.syscall(ctypes.c_long(_NR_PIDFD_GETFD), ctypes.c_int(pidfd),
                                ctypes.c_int(target), ctypes.c_uint(0)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def fd_cloexec(pid: int, target: int) -> bool:
    """Whether fd `target` of `pid` is close-on-exec (its fdinfo `flags`, octal)."""
    try:
        with open(f"/proc/{pid}/fdinfo/{target}", "rb") as f:
            for line in f:
                if line.startswith(b"flags:"):
                    return bool(int(line.split()[1], 8) & os.O_CLOEXEC)
    except (OSError, ValueError, IndexError):
        pass
    return True


class Withdrawn(Exception):
    """The caller is gone or no longer in the call: nothing to answer."""

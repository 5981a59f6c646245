"""The transparent broker's lookups: stat, lstat, newfstatat, statx, access,
faccessat, faccessat2 of a brokered path, answered from the supervisor's view.

Parent, outside the sandbox, with the supervisor's privilege. A program
often looks a file up before it opens it (`os.path.exists`, `stat` for the
size); in its own namespace a brokered file usually is not there. For a
path a rule names, the supervisor looks it up beneath the rule's fd
(paths.PathPolicy.lookup: O_PATH, so nothing is opened) and answers:

- stat family: the kernel's own `struct stat` / `struct statx` of our fd
  (fstatat / statx with AT_EMPTY_PATH, so the layout is the kernel's),
  written into the caller's buffer, then the answer 0;
- access family: 0 when the rule allows the access asked (R_OK: read,
  W_OK: write; X_OK never: the broker hands out no program), else EACCES.

Writing into the caller is the one step that cannot be checked after the
fact: the caller's memory is written through /proc/PID/mem opened *before*
the ID_VALID check. The open binds that fd to the caller's address space;
the check then proves the pid was still the caller when it was opened (a
caller alive at the check was alive since its notification, so its pid was
not reused), and the write goes to that address space whatever happens to
the pid afterwards. A process_vm_writev by pid after a check could land in a
process that reused the pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from typing import TYPE_CHECKING

from warden.supervisor.broker import _notif
from warden.supervisor.broker.decision import Decision, Refused
from warden.supervisor.broker.paths import PATH_MAX
from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.notify import Notification

if TYPE_CHECKING:
    from warden.supervisor.broker.transparent import TransparentBroker

AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_EACCESS = 0x200
AT_STATX_SYNC_TYPE = 0x6000
_AT_FDCWD = 0xFFFFFF9C
_STAT_SIZE = {"x86_64": 144, "aarch64": 128}[os.uname().machine]
_STATX_SIZE = 256
_NR = {"x86_64": {"newfstatat": 262, "statx": 332},
       "aarch64": {"newfstatat": 79, "statx": 291}}[os.uname().machine]
# The argument that carries each call's AT_* flags: the filter sends a call to
# user-notify only when AT_EMPTY_PATH is clear there (a lookup by descriptor,
# every fstat of glibc, would otherwise pay the round trip).
LOOKUP_FILTER = {"newfstatat": 3, "statx": 2}
LOOKUP_CALLS = {"x86_64": {4: "stat", 6: "lstat", 262: "newfstatat", 332: "statx",
                           21: "access", 269: "faccessat", 439: "faccessat2"},
                "aarch64": {79: "newfstatat", 291: "statx", 48: "faccessat",
                            439: "faccessat2"}}.get(os.uname().machine, {})


def _raw_stat(fd: int, call: str, flags: int, mask: int) -> bytes:
    """The kernel's own answer for our O_PATH fd, in the layout the caller's call uses."""
    size = _STATX_SIZE if call == "statx" else _STAT_SIZE
    buf = ctypes.create_string_buffer(size)
    if call == "statx":
        args: tuple[object, ...] = (ctypes.c_int(fd), b"", ctypes.c_int(
            AT_EMPTY_PATH | (flags & AT_STATX_SYNC_TYPE)), ctypes.c_uint(mask), buf)
    else:
        args = (ctypes.c_int(fd), b"", buf, ctypes.c_int(AT_EMPTY_PATH))
    if _sys.libc.syscall(ctypes.c_long(_NR["statx" if call == "statx" else "newfstatat"]),
                         *args) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw


class Lookups:
    """The lookups of one TransparentBroker."""

    def __init__(self, broker: TransparentBroker) -> None:
        self._b = broker
        self._fd = broker.seccomp_fd

    def handle(self, n: Notification, call: str) -> None:
        """Answer one lookup notification."""
        a = n.args
        dirfd, ptr = _AT_FDCWD, a[0]
        flags = mask = mode = 0
        out = 0
        if call in ("stat", "lstat"):
            out, flags = a[1], AT_SYMLINK_NOFOLLOW if call == "lstat" else 0
        elif call == "newfstatat":
            dirfd, ptr, out, flags = a[0], a[1], a[2], a[3]
        elif call == "statx":
            dirfd, ptr, flags, mask, out = a[0], a[1], a[2], a[3], a[4]
        elif call == "access":
            mode = a[1]
        else:  # faccessat, faccessat2
            dirfd, ptr, mode = a[0], a[1], a[2]
            flags = a[3] if call == "faccessat2" else 0
        audit = self._b.policy.auditor
        try:
            raw = _notif.read_string(n.pid, ptr, PATH_MAX)
        except OSError:
            self._b.check_valid(n)
            _notif.respond(self._fd, n.id, error=errno.EFAULT)
            return
        self._b.check_valid(n)
        if raw is None:
            _notif.respond(self._fd, n.id, error=errno.ENAMETOOLONG)
            return
        if not raw and flags & AT_EMPTY_PATH:
            # fstat by descriptor (glibc's fstat is fstatat(fd, "", AT_EMPTY_PATH)): the
            # caller's own fd, no path: its own call runs. The filter should not even
            # send these (`LOOKUP_FILTER`); were the "" rewritten meanwhile, the kernel
            # would look the new path up with the caller's rights, in its namespaces.
            _notif.respond(self._fd, n.id, cont=True)
            return
        path = os.fsdecode(raw)
        if not path.startswith("/") and dirfd & 0xFFFFFFFF != _AT_FDCWD:
            path = f"(fd {dirfd & 0xFFFFFFFF})/{path}"
        if not self._b.policy.paths.names(path):
            self._b.answer_unnamed(n, "open", path)
            return
        try:
            fd, rule, decision = self._b.policy.paths.lookup(
                path, follow=not flags & AT_SYMLINK_NOFOLLOW)
        except Refused as r:
            audit.record("open", "transparent", f"{call} {path}", r.decision)
            _notif.respond(self._fd, n.id, error=r.decision.errno)
            return
        try:
            if call.startswith(("access", "faccessat")):
                want = {"read"} if mode & os.R_OK else set()
                want |= {"write"} if mode & os.W_OK else set()
                if mode & os.X_OK or not want <= rule.modes:
                    decision = Decision.refuse(errno.EACCES, decision.rule,
                                               "the rule does not allow that access")
                audit.record("open", "transparent", f"{call} {path}", decision)
                _notif.respond(self._fd, n.id, error=decision.errno)
                return
            data = _raw_stat(fd, call, flags, mask)
        except OSError as e:
            _notif.respond(self._fd, n.id, error=e.errno or errno.EIO)
            return
        finally:
            os.close(fd)
        self._write(n, out, data)
        audit.record("open", "transparent", f"{call} {path}", decision)

    def _write(self, n: Notification, addr: int, data: bytes) -> None:
        """`data` into the caller's memory at `addr`, then the answer 0 (or EFAULT)."""
        try:
            mem = os.open(f"/proc/{n.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            self._b.check_valid(n)  # gone: Withdrawn; else it cannot be written
            _notif.respond(self._fd, n.id, error=errno.EFAULT)
            return
        try:
            self._b.check_valid(n)  # after the open: that mem is the caller's
            try:
                done = os.pwrite(mem, data, addr)
            except (OSError, OverflowError):  # unmapped, or beyond any offset
                done = -1
            _notif.respond(self._fd, n.id, error=0 if done == len(data) else errno.EFAULT)
        finally:
            with contextlib.suppress(OSError):
                os.close(mem)

"""The supervisor's end of seccomp user-notify: the kernel's own report of a refused call.

The child's filter turns kill actions (and calls from a foreign architecture,
i386 or x32) into SECCOMP_RET_USER_NOTIF. The calling thread then blocks in
the kernel while the supervisor reads, from this listener, the syscall
number, architecture and arguments the kernel recorded. The supervisor
records them as a `seccomp_violation` and kills the sandbox; the call is
never answered, so it never runs.

Why a thread blocks in SECCOMP_IOCTL_NOTIF_RECV for each listener, rather
than an event loop polling it: until the supervisor has received a
notification, the kernel lets the calling thread's own signals interrupt the
wait (a 20 µs interval timer does), and the interrupted call takes its
notification off the queue before the call returns EINTR or restarts. poll()
only reports notifications still queued, so a poll-driven reader can miss one
whole. What the kernel does keep is the count of notifications it queued: a
RECV that consumes that count and then finds the notification gone fails
with ENOENT. So:

- a blocked RECV is woken by the kernel as the notification is queued; with
  SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (Linux 6.6) the wake-up runs the
  receiving thread on the caller's own CPU as the caller goes to sleep, so it
  is normally received before anything else in the sandbox runs;
- once received, SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (Linux 5.19, set when
  the filter is loaded) keeps the caller waiting through its own signals;
- ENOENT while processes still use the filter means a notification was queued
  and withdrawn: a refused call happened. It is reported as a violation whose
  call is unknown.

ENOENT once no process uses the filter any more (POLLHUP) is also what every
listener reads at the end, so it is not evidence: the kernel keeps nothing of
a notification whose caller died before it was received.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import select
import struct
import threading
from typing import NamedTuple

from supervisor.sandbox.status import Violation

_NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, nr, arch, ip, args[6]
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SET_FLAGS = 0x40082104  # _IOW('!', 4, __u64); the argument is the value
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
_X32_BIT = 0x40000000
_ARCH_X32_TOKEN = 0x4000003E  # libseccomp's x32 token: its own name table
_ARCH_NAMES = {AUDIT_ARCH_X86_64: "x86_64", AUDIT_ARCH_I386: "i386", 0xC00000B7: "aarch64",
               0x40000028: "arm"}

WITHDRAWN = "a refused call was withdrawn before it could be read"

# How long the end of a listener may take to be read once its processes are gone.
# Only reached if the receiving thread is starved; the kernel answers at once.
_DRAIN_SECONDS = 5.0


class NotifyError(OSError):
    """The listener could not be taken or read."""


class Notification(NamedTuple):
    """One refused call as the kernel queued it; `withdrawn`: queued, then taken back
    (its caller was interrupted before the supervisor read it), so only its existence
    is known."""

    id: int
    pid: int
    nr: int
    arch: int
    args: tuple[int, ...]
    withdrawn: bool = False

    def violation(self) -> Violation:
        if self.withdrawn:
            return Violation(syscall="unknown", nr=-1, arch="unknown", args=(), pid=0)
        arch_name = _ARCH_NAMES.get(self.arch, hex(self.arch))
        token = self.arch
        if self.arch == AUDIT_ARCH_X86_64 and self.nr & _X32_BIT:
            arch_name, token = "x32", _ARCH_X32_TOKEN
        return Violation(syscall=syscall_name(token, self.nr), nr=self.nr, arch=arch_name,
                         args=self.args, pid=self.pid)

    def reason(self) -> str:
        """The sentence recorded as the sandbox's reason."""
        if self.withdrawn:
            return f"seccomp refused a call: {WITHDRAWN}"
        v = self.violation()
        return f"seccomp refused {v.syscall}" + (f" ({v.arch})" if v.arch != "x86_64" else "")


def syscall_name(arch_token: int, nr: int) -> str:
    """Name of syscall `nr` on `arch_token` (libseccomp's table), or 'unknown(NR)'."""
    try:
        import pyseccomp

        name = pyseccomp.resolve_syscall(arch_token, nr)
        return name.decode() if isinstance(name, bytes) else str(name)
    except (ValueError, OSError, ImportError):
        return f"unknown({nr})"


def _hung_up(fd: int) -> bool:
    """POLLHUP: no process uses the filter any more."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return any(ev & select.POLLHUP for _fd, ev in p.poll(0))


class Listener:
    """A seccomp notify fd held by the supervisor, read by a thread of its own.

    `fd` is what an event loop watches: an eventfd, readable while a report is
    waiting or once the listener has ended. `state()` and `receive()` are
    non-blocking. The receiving thread owns the seccomp fd and the eventfd and
    closes both when it ends, which it does once no process uses the filter:
    closing from another thread while it sits in RECV would let a reused fd
    number be read or written.
    """

    def __init__(self, fd: int) -> None:
        self._seccomp_fd = fd
        # Let the kernel run the receiving thread on the caller's CPU (Linux 6.6);
        # older kernels refuse the ioctl (EINVAL, ENOTTY) and keep the ordinary wake-up.
        try:
            fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
            self.sync_wake_up = True
        except OSError:
            self.sync_wake_up = False
        self._event = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.fd = self._event
        self._reports: collections.deque[Notification] = collections.deque()
        self._lock = threading.Lock()
        self._ended = False
        self._closed = False
        self._error: NotifyError | None = None
        self._thread = threading.Thread(target=self._receive_all, name=f"seccomp-listener-{fd}",
                                        daemon=True)
        self._thread.start()

    # -- the receiving thread
    def _receive_all(self) -> None:
        fd = self._seccomp_fd
        buf = bytearray(_NOTIF.size)
        while True:
            try:
                # Blocks until a notification is queued or no process uses the filter;
                # the GIL is released meanwhile.
                fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                if e.errno == errno.ENOENT:
                    if _hung_up(fd):
                        break  # the end (or a withdrawal the kernel kept nothing of)
                    self._report(Notification(0, 0, -1, 0, (), withdrawn=True))
                    continue
                self._error = NotifyError(e.errno or 0,
                                          f"reading the seccomp listener: {e.strerror}")
                break
            nid, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(buf)
            self._report(Notification(nid, pid, nr, arch, tuple(args)))
            buf[:] = bytes(_NOTIF.size)  # the kernel wants a zeroed buffer
        with self._lock:
            self._ended = True
            if self._closed:
                self._close_fds()
            else:
                os.eventfd_write(self._event, 1)

    def _report(self, n: Notification) -> None:
        with self._lock:
            self._reports.append(n)
            if not self._closed:
                os.eventfd_write(self._event, 1)

    def _close_fds(self) -> None:
        for fd in (self._seccomp_fd, self._event):
            os.close(fd)
        self._seccomp_fd = self._event = -1

    # -- the owner's side
    def state(self) -> str:
        """'pending' (a report waits), 'hup' (ended, nothing left) or 'idle'.

        When no process uses the filter any more, first waits (briefly: the
        kernel answers at once) for the receiving thread to have read
        everything, so what the processes did before they ended is reported."""
        if self._closed:
            return "hup"
        if not self._ended and _hung_up(self._seccomp_fd):
            self.drain()
        with self._lock:
            # Clear the wake-up first: a report added after this writes it again.
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._event)
            if self._reports:
                return "pending"
            return "hup" if self._ended else "idle"

    def receive(self) -> Notification | None:
        """The next report, or None. Raises NotifyError if the listener failed."""
        with self._lock:
            if self._reports:
                n = self._reports.popleft()
                if self._reports and not self._closed:
                    os.eventfd_write(self._event, 1)
                return n
        if self._ended and self._error is not None:
            raise self._error
        return None

    def drain(self, timeout: float = _DRAIN_SECONDS) -> bool:
        """Wait until the receiving thread has read everything and ended: call it once
        the processes using the filter are gone. True if it ended."""
        self._thread.join(timeout)
        return self._ended

    def close(self) -> None:
        """Stop watching: nothing is reported any more. The descriptors go with the
        receiving thread, at the latest when the last process using the filter ends."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.fd = -1
            if self._ended:
                self._close_fds()

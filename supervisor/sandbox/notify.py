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
a notification whose caller died (or was interrupted and then exited) before
it was received. For that, each listener also has a one-shot io_uring poll
for POLLIN armed on it (`_Witness`): io_uring takes the event mask from the
wake-up itself and takes the poll off the wait queue at that first wake-up,
so the kernel's own "a notification was queued" is kept in the completion
even when the notification is gone by the time anyone looks. A listener
whose witness completed with POLLIN, but whose thread read no notification,
had a refused call withdrawn: it is reported as one. Without io_uring
(disabled by the administrator, or a kernel before 5.1) that last case can
be missed, and `WEAKENED_NO_WITNESS` says so.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import select
import struct
import threading
import time
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


def witness_available() -> bool:
    """Whether a withdrawn refused call can still be seen once the sandbox has ended."""
    return _Witness.get() is not None


def _hung_up(fd: int) -> bool:
    """POLLHUP: no process uses the filter any more."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return any(ev & select.POLLHUP for _fd, ev in p.poll(0))


WEAKENED_NO_WITNESS = ("seccomp refusal witness (io_uring is unavailable here: a refused call "
                       "withdrawn by the sandbox's own signal just before it exits can go "
                       "unrecorded)")

_NR_IO_URING_SETUP = {"x86_64": 425, "aarch64": 425}
_NR_IO_URING_ENTER = {"x86_64": 426, "aarch64": 426}
_IORING_OFF_SQES = 0x10000000
_IORING_FEAT_SINGLE_MMAP = 1
_IORING_ENTER_GETEVENTS = 1
_IORING_OP_POLL_ADD = 6
_PARAMS_SIZE = 120  # struct io_uring_params
_SQ_OFF = struct.Struct("=7IIQ")  # head tail ring_mask ring_entries flags dropped array resv1 ..
_CQ_OFF = struct.Struct("=8IQ")  # head tail ring_mask ring_entries overflow cqes flags resv1 ..
_SQE = struct.Struct("=BBHiQQIIQ24x")  # opcode flags ioprio fd off addr len poll32_events data
_CQE = struct.Struct("=QiI")  # user_data res flags
_U32 = struct.Struct("=I")


class _Witness:
    """One io_uring for the process, used for one thing: a one-shot POLLIN poll per
    listener, whose completion says whether a notification was ever queued on it.

    The poll is submitted, and its completion reaped, by the listener's own
    receiving thread: io_uring completes a poll in the task that submitted it.
    The ring's memory is not inherited by forked children (MADV_DONTFORK): a
    forked worker must not be able to write our completions."""

    _instance: _Witness | None = None
    _unavailable = False
    _create_lock = threading.Lock()

    @classmethod
    def get(cls) -> _Witness | None:
        with cls._create_lock:
            if cls._instance is not None and cls._instance._pid != os.getpid():
                # A forked child: the ring's memory was not inherited (MADV_DONTFORK).
                os.close(cls._instance._fd)
                cls._instance = None
            if cls._instance is None and not cls._unavailable:
                try:
                    cls._instance = cls()
                except (OSError, ValueError, KeyError):
                    cls._unavailable = True
            return cls._instance

    def __init__(self) -> None:
        machine = os.uname().machine
        self._syscall = ctypes.CDLL(None, use_errno=True).syscall
        self._nr_enter = _NR_IO_URING_ENTER[machine]
        params = ctypes.create_string_buffer(_PARAMS_SIZE)
        fd = int(self._syscall(ctypes.c_long(_NR_IO_URING_SETUP[machine]), ctypes.c_uint(256),
                               params))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        try:
            sq_entries, cq_entries, _flags, _cpu, _idle, features = struct.unpack_from(
                "=6I", params.raw, 0)
            self._sq = _SQ_OFF.unpack_from(params.raw, 40)
            self._cq = _CQ_OFF.unpack_from(params.raw, 80)
            if not features & _IORING_FEAT_SINGLE_MMAP:
                raise OSError(errno.ENOSYS, "io_uring without IORING_FEAT_SINGLE_MMAP")
            size = max(self._sq[6] + sq_entries * 4, self._cq[5] + cq_entries * 16)
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            self._ring = mmap.mmap(fd, size, mmap.MAP_SHARED, prot, offset=0)
            self._sqes = mmap.mmap(fd, sq_entries * 64, mmap.MAP_SHARED, prot,
                                   offset=_IORING_OFF_SQES)
            for m in (self._ring, self._sqes):
                m.madvise(mmap.MADV_DONTFORK)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._pid = os.getpid()
        self._sq_mask = _U32.unpack_from(self._ring, self._sq[2])[0]
        self._cq_mask = _U32.unpack_from(self._ring, self._cq[2])[0]
        self._lock = threading.Lock()
        self._done: dict[int, int] = {}  # user_data -> poll result
        self._next = 0

    def _enter(self, submit: int, wait: int) -> None:
        ret = int(self._syscall(ctypes.c_long(self._nr_enter), ctypes.c_uint(self._fd),
                                ctypes.c_uint(submit), ctypes.c_uint(wait),
                                ctypes.c_uint(_IORING_ENTER_GETEVENTS if wait or not submit
                                              else 0), None, ctypes.c_size_t(0)))
        if ret < 0:
            err = ctypes.get_errno()
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))

    def watch(self, fd: int) -> int:
        """Arm the one-shot poll on `fd`; returns its token for seen()."""
        with self._lock:
            self._next += 1
            token = self._next
            tail = _U32.unpack_from(self._ring, self._sq[1])[0]
            idx = tail & self._sq_mask
            _SQE.pack_into(self._sqes, idx * 64, _IORING_OP_POLL_ADD, 0, 0, fd, 0, 0, 0,
                           select.POLLIN, token)
            _U32.pack_into(self._ring, self._sq[6] + 4 * idx, idx)
            # The syscall that follows orders these stores before the kernel reads the tail.
            _U32.pack_into(self._ring, self._sq[1], (tail + 1) & 0xFFFFFFFF)
            self._enter(1, 0)
            return token

    def _reap(self) -> None:
        head = _U32.unpack_from(self._ring, self._cq[0])[0]
        tail = _U32.unpack_from(self._ring, self._cq[1])[0]
        while head != tail:
            data, res, _flags = _CQE.unpack_from(self._ring,
                                                 self._cq[5] + (head & self._cq_mask) * 16)
            self._done[data] = res
            head = (head + 1) & 0xFFFFFFFF
        _U32.pack_into(self._ring, self._cq[0], head)

    def queued(self, token: int) -> bool:
        """Once the listener has hung up: whether a notification was ever queued on it.

        Called by the thread that armed the poll, which the kernel completes it in
        (when that thread enters the kernel); the completion is at most the
        hang-up's own wake-up away. Bounded all the same: False if it never comes."""
        deadline = time.monotonic() + _DRAIN_SECONDS
        while True:
            with self._lock:
                self._enter(0, 0)  # runs this thread's pending completions
                self._reap()
                if token in self._done:
                    res = self._done.pop(token)
                    break
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0002)
        # A negative result is the poll failing (never armed): nothing is known.
        return res >= 0 and bool(res & select.POLLIN)


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
        witness = _Witness.get()
        token = witness.watch(fd) if witness is not None else 0
        reported = False
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
                        break  # the end, or a withdrawal the witness still knows of
                    self._report(Notification(0, 0, -1, 0, (), withdrawn=True))
                    reported = True
                    continue
                self._error = NotifyError(e.errno or 0,
                                          f"reading the seccomp listener: {e.strerror}")
                break
            nid, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(buf)
            self._report(Notification(nid, pid, nr, arch, tuple(args)))
            reported = True
            buf[:] = bytes(_NOTIF.size)  # the kernel wants a zeroed buffer
        if witness is not None and self._error is None:
            try:
                if witness.queued(token) and not reported:
                    self._report(Notification(0, 0, -1, 0, (), withdrawn=True))
            except OSError as e:
                self._error = NotifyError(e.errno or 0, f"reading the refusal witness: {e}")
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

"""The supervisor's end of seccomp user-notify: the kernel's own report of a refused call.

The child's filter turns kill actions (and calls from a foreign architecture,
i386 or x32) into SECCOMP_RET_USER_NOTIF. The calling thread then blocks in
the kernel while the supervisor reads, from this listener, the syscall
number, architecture and arguments the kernel recorded. The supervisor
records them as a `seccomp_violation` and kills the sandbox; the call is
never answered, so it never runs.

Why not simply poll the listener and read what it holds: until the
supervisor has received a notification, the kernel lets the calling
thread's own signals interrupt its wait (a 20 µs interval timer does), and
the interrupted call takes its notification off the queue before it returns
EINTR or restarts; a thread killed by another's exit_group does the same.
poll() reports only notifications still queued, so such a call left no
trace, and once no process uses the filter RECV answers ENOENT whether or
not one was withdrawn.

So each listener has a one-shot io_uring poll for POLLIN armed on it. For a
wake-up that carries its event mask (the kernel's "a notification was
queued" does), io_uring keeps that mask as the poll's result and takes the
poll off the wait queue at once, so its completion says POLLIN even when
the notification is gone by the time anyone looks, and even when the
sandbox has ended since. On that completion the supervisor receives
(SECCOMP_IOCTL_NOTIF_RECV, which then never blocks: the kernel counts the
notifications it queued, and this one is still counted): the notification
itself, or ENOENT, which now means "queued, then withdrawn": a refused call
that happened, reported as a violation whose call is unknown. Then the poll
is armed again. The event loop watches the ring's fd.

SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (set when the filter is loaded, see
seccomp.py) keeps a received caller waiting through its own signals.

Without io_uring (disabled by the administrator, or a kernel before 5.1)
the listener is polled as it is; a withdrawn call can then go unrecorded,
and `WEAKENED_NO_WITNESS` says so in the sandbox's status.
"""

from __future__ import annotations

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
from typing import Any, NamedTuple

from warden.errors import ChildFailed
from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.calltext import PATH_ARG
from warden.supervisor.sandbox.errors import SandboxError
from warden.supervisor.sandbox.lowlevel import wait_readable
from warden.supervisor.sandbox.status import Violation

_NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, nr, arch, ip, args[6]
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
_RESP = struct.Struct("=QqiI")  # seccomp_notif_resp: id u64, val s64, error s32, flags u32
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102
_ID = struct.Struct("=Q")
_PAGE = mmap.PAGESIZE

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
_X32_BIT = 0x40000000
_ARCH_X32_TOKEN = 0x4000003E  # libseccomp's x32 token: its own name table
_ARCH_NAMES = {AUDIT_ARCH_X86_64: "x86_64", AUDIT_ARCH_I386: "i386", 0xC00000B7: "aarch64",
               0x40000028: "arm"}

WITHDRAWN = "a refused call was withdrawn before it could be read"

# How long the end of a listener may take to be read once its processes are gone
# (the kernel's hang-up is at most a wake-up away; bounded all the same).
_DRAIN_SECONDS = 5.0


class NotifyError(SandboxError, ChildFailed, OSError):
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


def respond(fd: int, nid: int, *, val: int = 0, error: int = 0, cont: bool = False) -> bool:
    """Answer notification `nid` on listener `fd`: return `val`, fail with `error` (a
    positive errno), or let the call run as the caller made it (`cont`). False when it
    was withdrawn meanwhile (its caller was interrupted or is gone)."""
    buf = bytearray(_RESP.pack(nid, val, -error if error else 0,
                               SECCOMP_USER_NOTIF_FLAG_CONTINUE if cont else 0))
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, buf, True)
    except FileNotFoundError:
        return False
    return True


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_readv = _sys.libc.process_vm_readv
_readv.restype = ctypes.c_ssize_t
_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_IOVec), ctypes.c_ulong,
                   ctypes.POINTER(_IOVec), ctypes.c_ulong, ctypes.c_ulong]


def id_valid(fd: int, nid: int) -> bool:
    """Whether notification `nid` still waits for an answer (its caller is alive and
    still in the call), so what was read from its pid was read from that caller."""
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, _ID.pack(nid))
    except FileNotFoundError:
        return False
    return True


def read_memory(pid: int, addr: int, size: int) -> bytes:
    """Up to `size` bytes at `addr` in process `pid` (fewer where a mapping ends);
    OSError EFAULT when nothing at `addr` is mapped."""
    out = bytearray()
    while len(out) < size:
        # One page at a time: process_vm_readv stops at the first unmapped page,
        # and a string may end just before one.
        chunk = min(size - len(out), _PAGE - (addr + len(out)) % _PAGE)
        buf = ctypes.create_string_buffer(chunk)
        local = _IOVec(ctypes.cast(buf, ctypes.c_void_p), chunk)
        remote = _IOVec(addr + len(out), chunk)
        n = _readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if n <= 0:
            if out:
                break
            err = ctypes.get_errno() or errno.EFAULT
            raise OSError(err, os.strerror(err))
        out += buf.raw[:n]
        if n < chunk:
            break
    return bytes(out)


def read_string(pid: int, addr: int, limit: int) -> bytes | None:
    """The NUL-terminated string at `addr` in `pid`, without its NUL; None when no NUL
    comes within `limit` bytes (the kernel's ENAMETOOLONG)."""
    out = bytearray()
    while len(out) < limit:
        chunk = min(limit - len(out), _PAGE - (addr + len(out)) % _PAGE)
        part = read_memory(pid, addr + len(out), chunk)
        nul = part.find(b"\0")
        if nul >= 0:
            return bytes(out + part[:nul])
        out += part
        if len(part) < chunk:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
    return None


def violation_path(fd: int, n: Notification, v: Violation) -> str | None:
    """The path argument of the refused call `n`, read from its caller's memory and
    kept only if the notification was still pending after the read (so the bytes
    are the caller's, not a reused pid's). At most 4 KiB; None when unreadable."""
    index = PATH_ARG.get(v.syscall)
    if index is None or v.arch != "x86_64" or n.withdrawn or not n.args[index]:
        return None
    try:
        raw = read_string(n.pid, n.args[index], 4096)
    except OSError:
        return None
    if raw is None or not id_valid(fd, n.id):
        return None
    return raw.decode(errors="backslashreplace")


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


WEAKENED_NO_WITNESS = ("seccomp refusal witness (io_uring is unavailable here: a refused call "
                       "the sandbox's own signal withdraws before warden reads it can go "
                       "unrecorded)")

_NR_IO_URING_SETUP = {"x86_64": 425, "aarch64": 425}
_NR_IO_URING_ENTER = {"x86_64": 426, "aarch64": 426}
_IORING_OFF_SQES = 0x10000000
_IORING_FEAT_SINGLE_MMAP = 1
_IORING_ENTER_GETEVENTS = 1
_IORING_OP_POLL_ADD = 6
_PARAMS_SIZE = 120  # struct io_uring_params
_SQ_OFF = struct.Struct("=7IIQ")  # head tail ring_mask ring_entries flags dropped array ..
_CQ_OFF = struct.Struct("=8IQ")  # head tail ring_mask ring_entries overflow cqes flags ..
_SQE = struct.Struct("=BBHiQQIIQ24x")  # opcode flags ioprio fd off addr len poll32_events data
_CQE = struct.Struct("=QiI")  # user_data res flags
_U32 = struct.Struct("=I")
_RING_ENTRIES = 4  # one poll in flight per listener


class _Ring:
    """A small io_uring of one listener's own, for its one-shot POLLIN polls.

    Its memory is not inherited by forked children (MADV_DONTFORK) and its fd
    is close-on-exec: a forked worker must not be able to write our completions.
    io_uring completes a poll in the thread that submitted it, when that thread
    next enters the kernel; `reap()` enters it."""

    _syscall: Any = None  # libc's syscall(), loaded once
    _unavailable = False

    def __init__(self) -> None:
        machine = os.uname().machine
        if _Ring._syscall is None:
            _Ring._syscall = ctypes.CDLL(None, use_errno=True).syscall
        self._call = _Ring._syscall
        self._nr_enter = _NR_IO_URING_ENTER[machine]
        params = ctypes.create_string_buffer(_PARAMS_SIZE)
        fd = int(self._call(ctypes.c_long(_NR_IO_URING_SETUP[machine]),
                            ctypes.c_uint(_RING_ENTRIES), params))
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
        self.fd = fd
        self._sq_mask = _U32.unpack_from(self._ring, self._sq[2])[0]
        self._cq_mask = _U32.unpack_from(self._ring, self._cq[2])[0]

    def _enter(self, submit: int, flags: int) -> None:
        ret = int(self._call(ctypes.c_long(self._nr_enter), ctypes.c_uint(self.fd),
                             ctypes.c_uint(submit), ctypes.c_uint(0), ctypes.c_uint(flags),
                             None, ctypes.c_size_t(0)))
        if ret < 0:
            err = ctypes.get_errno()
            if err not in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
                raise OSError(err, f"io_uring_enter: {os.strerror(err)}")

    def poll_in(self, fd: int) -> None:
        """Arm a one-shot POLLIN poll on `fd`."""
        tail = _U32.unpack_from(self._ring, self._sq[1])[0]
        idx = tail & self._sq_mask
        _SQE.pack_into(self._sqes, idx * 64, _IORING_OP_POLL_ADD, 0, 0, fd, 0, 0, 0,
                       select.POLLIN, 1)
        _U32.pack_into(self._ring, self._sq[6] + 4 * idx, idx)
        # The syscall below orders these stores before the kernel reads the tail.
        _U32.pack_into(self._ring, self._sq[1], (tail + 1) & 0xFFFFFFFF)
        self._enter(1, 0)

    def reap(self) -> list[int]:
        """The results of the polls completed so far (running this thread's completions)."""
        self._enter(0, _IORING_ENTER_GETEVENTS)
        out = []
        head = _U32.unpack_from(self._ring, self._cq[0])[0]
        tail = _U32.unpack_from(self._ring, self._cq[1])[0]
        while head != tail:
            _data, res, _flags = _CQE.unpack_from(self._ring,
                                                  self._cq[5] + (head & self._cq_mask) * 16)
            out.append(res)
            head = (head + 1) & 0xFFFFFFFF
        _U32.pack_into(self._ring, self._cq[0], head)
        return out

    def close(self) -> None:
        # Closing the ring cancels the poll still armed, which drops its reference
        # to the listener.
        self._ring.close()
        self._sqes.close()
        os.close(self.fd)


# The ring of the last ended listener, kept for the next one: setting one up costs
# ~0.1 ms, a tenth of a zygote spawn. One only, like the parent's own pidfd: a
# process that ran many sandboxes at once holds no more descriptors afterwards.
# Only a ring with nothing in flight comes back here; a forked child starts
# afresh (the ring's memory was not inherited).
_spare_rings: list[_Ring] = []
_spare_pid = 0
_SPARE_MAX = 1
_spare_lock = threading.Lock()


def _new_ring() -> _Ring | None:
    global _spare_pid
    with _spare_lock:
        if _spare_pid != os.getpid():
            _spare_rings.clear()
            _spare_pid = os.getpid()
        if _spare_rings:
            return _spare_rings.pop()
    if _Ring._unavailable:
        return None
    try:
        return _Ring()
    except (OSError, ValueError, KeyError):
        _Ring._unavailable = True  # the same everywhere in this process: stop trying
        return None


def _retire_ring(ring: _Ring, idle: bool) -> None:
    """Keep an idle ring (no poll armed, completions reaped) for reuse; close others."""
    with _spare_lock:
        if idle and _spare_pid == os.getpid() and len(_spare_rings) < _SPARE_MAX:
            _spare_rings.append(ring)
            return
    ring.close()


def witness_available() -> bool:
    """Whether a refused call withdrawn by the sandbox is still seen (io_uring works here)."""
    ring = _new_ring()
    if ring is None:
        return False
    _retire_ring(ring, idle=True)
    return True


class Listener:
    """A seccomp notify fd held by the supervisor.

    `fd` is what an event loop watches for readability: the ring's fd (the
    listener's own fd without io_uring). `state()` and `receive()` never block.
    Used from one thread at a time (the owner's).
    """

    def __init__(self, fd: int) -> None:
        self._seccomp_fd = fd
        os.set_blocking(fd, False)
        self._reports: list[Notification] = []
        self._ended = False
        self._closed = False
        self._lock = threading.Lock()
        self._ring = _new_ring()
        if self._ring is not None:
            try:
                self._ring.poll_in(fd)
            except OSError:
                _retire_ring(self._ring, idle=False)
                self._ring = None
        self.fd = self._ring.fd if self._ring is not None else fd
        # Whether a refused call the sandbox withdraws is seen on this listener.
        self.witnessed = self._ring is not None

    @property
    def seccomp_fd(self) -> int:
        """The seccomp listener itself (-1 once closed), for a broker that answers the
        notifications this listener receives (ioctls only: never read or close it)."""
        return self._seccomp_fd

    def _recv(self) -> Notification | None:
        """One RECV, after the poll said a notification was queued (so it cannot block)."""
        buf = bytearray(_NOTIF.size)
        while True:
            try:
                fcntl.ioctl(self._seccomp_fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                if e.errno == errno.ENOENT:
                    return None
                raise NotifyError(e.errno or 0,
                                  f"reading the seccomp listener: {e.strerror}") from None
            nid, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(buf)
            return Notification(nid, pid, nr, arch, tuple(args))

    def _pump(self) -> None:
        """Turn what the kernel reported since the last call into reports."""
        if self._ended:
            return
        if self._ring is None:
            self._pump_polled()
            return
        for res in self._ring.reap():
            if res < 0:  # the poll failed (ECANCELED: its submitting thread ended): again
                self._ring.poll_in(self._seccomp_fd)
                continue
            if res & select.POLLIN:
                # A notification was queued: the kernel still counts it, so RECV returns
                # at once, with it or (withdrawn since) with ENOENT.
                self._reports.append(self._recv() or
                                     Notification(0, 0, -1, 0, (), withdrawn=True))
            if res & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                self._ended = True  # no process uses the filter: nothing more can come
            else:
                self._ring.poll_in(self._seccomp_fd)

    def _pump_polled(self) -> None:
        """Without io_uring: what poll() shows now (a withdrawn call can be missed)."""
        p = select.poll()
        p.register(self._seccomp_fd, select.POLLIN)
        for _fd, ev in p.poll(0):
            if ev & select.POLLIN:
                n = self._recv()
                if n is not None:
                    self._reports.append(n)
                elif not _hung_up(self._seccomp_fd):
                    # ENOENT while processes use the filter: queued, then withdrawn.
                    self._reports.append(Notification(0, 0, -1, 0, (), withdrawn=True))
            elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                self._ended = True

    def state(self) -> str:
        """'pending' (a report waits), 'hup' (ended, nothing left) or 'idle'."""
        with self._lock:
            if self._closed:
                return "hup"
            self._pump()
            if self._reports:
                return "pending"
            return "hup" if self._ended else "idle"

    def receive(self) -> Notification | None:
        """The next report, or None."""
        with self._lock:
            if not self._reports and not self._closed:
                self._pump()
            return self._reports.pop(0) if self._reports else None

    def drain(self, timeout: float = _DRAIN_SECONDS) -> bool:
        """Read the listener to its end: call it once the processes using the filter
        are gone (their hang-up is then at most a wake-up away). True if it ended."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._closed:
                    return True
                self._pump()
                if self._ended or (self._ring is None and _hung_up(self._seccomp_fd)):
                    return True
                fd = self.fd
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            wait_readable([fd], min(0.010, max(0.001, left)))  # a hang-up wakes it too

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._ring is not None:
                # Ended: its last poll completed and was reaped, so nothing is in flight.
                _retire_ring(self._ring, idle=self._ended)
                self._ring = None
            with contextlib.suppress(OSError):
                os.close(self._seccomp_fd)
            self.fd = self._seccomp_fd = -1

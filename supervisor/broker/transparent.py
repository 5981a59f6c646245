"""The transparent broker: an unmodified program's own open() and connect() answered
by the supervisor, with the supervisor's rights, by policy.

Parent, outside the sandbox, with the supervisor's privilege. The child's
filter sends open, openat, openat2, creat (and connect) to user-notify; the
calling thread waits in the kernel while the supervisor, for each
notification:

1. reads what the call names from the caller's memory (the path, the
   `struct open_how`, the sockaddr) with process_vm_readv, bounded (a path of
   PATH_MAX bytes without its NUL is ENAMETOOLONG, as the kernel says);
2. checks SECCOMP_IOCTL_NOTIF_ID_VALID: the notification still waits, so
   the pid it names was still that caller while we read (a pid reused by
   another process after the caller died would otherwise have been read);
3. decides by the sandbox's `Policy` on the copy it read, and acts on the
   copy: opens the path from its own directory fd (paths.py) or connects its
   own socket to the address it checked;
4. installs the result in the caller with SECCOMP_IOCTL_NOTIF_ADDFD: for an
   open, with SECCOMP_ADDFD_FLAG_SEND, so installing and answering are one
   step and the caller's open() returns the new fd; for a connect, in place of
   the caller's socket (SETFD), then the answer 0 (connect returns 0, not an
   fd); or answers with the errno the policy gives.

SECCOMP_USER_NOTIF_FLAG_CONTINUE (run the call as the caller made it) is
never the answer to a request a rule names: the kernel would read the path
again from the caller's memory, after our check, where another thread may
have rewritten it. It is only the answer to requests no rule names, when the
embedder asks for that (`unnamed=None`): the caller then runs its own call
with its own rights in its own namespaces, exactly as without a broker, so
whatever it rewrote gains it nothing it did not have. docs/broker.md has
the whole threat analysis.

The broker never blocks: an open is O_NONBLOCK; a connect is started
non-blocking and, unless the caller's socket is non-blocking (then it gets
the connecting socket and EINPROGRESS, as from the kernel), finished when
its socket is writable (`pending_fds`, `finish`) or answered ETIMEDOUT at
its deadline (`expire`).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import select
import struct
import time
from typing import Literal

from warden.supervisor.broker import _notif
from warden.supervisor.broker._notif import Withdrawn
from warden.supervisor.broker.connects import CONNECT_TIMEOUT, MAX_PENDING, Connects
from warden.supervisor.broker.decision import Decision, Refused
from warden.supervisor.broker.lookups import LOOKUP_CALLS, Lookups
from warden.supervisor.broker.paths import PATH_MAX, OpenRequest
from warden.supervisor.broker.policy import Policy
from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.notify import Notification

logger = logging.getLogger("warden.broker")

_X32_BIT = 0x40000000
_SYSCALLS: dict[str, dict[int, str]] = {
    "x86_64": {2: "open", 257: "openat", 437: "openat2", 85: "creat", 42: "connect"},
    "aarch64": {56: "openat", 437: "openat2", 203: "connect"},
}
CALLS = _SYSCALLS.get(os.uname().machine, {})
OPEN_CALLS = ("open", "openat", "openat2", "creat")
_AT_FDCWD = 0xFFFFFF9C  # -100 as the kernel passes it, an unsigned 64-bit register
_OPEN_HOW = struct.Struct("=QQQ")
_RESOLVE_HONOURED = _sys.RESOLVE_NO_SYMLINKS | _sys.RESOLVE_NO_MAGICLINKS


def brokered_syscalls(connect: bool = True, lookups: bool = False) -> list[str]:
    """The calls a child's filter must send to user-notify for this broker (with
    `lookups`, newfstatat and statx only when AT_EMPTY_PATH is clear in the argument
    lookups.LOOKUP_FILTER names)."""
    names = [n for n in CALLS.values() if n in OPEN_CALLS]
    return (names + (["connect"] if connect else [])
            + (list(LOOKUP_CALLS.values()) if lookups else []))


@dataclasses.dataclass(frozen=True)
class OpenCall:
    """An open as read from the caller: `request` (None if unreadable, then `refused`
    says how the kernel would answer) and its openat2 RESOLVE_* flags."""

    n: Notification
    call: str
    request: OpenRequest | None
    resolve: int
    refused: Decision | None


class TransparentBroker:
    """Answers the brokered calls of one sandbox's listener by its `Policy`.

    `seccomp_fd` is the listener (notify.Listener receives from it; this only
    answers). `unnamed` is the answer to a request no rule names: None lets the
    call run as the child made it (its own rights, its own namespaces: what the
    sandbox gives today), an errno fails it. Used from one thread."""

    def __init__(self, seccomp_fd: int, policy: Policy, *, unnamed: int | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 max_pending: int = MAX_PENDING, connect: bool = True,
                 lookups: bool = False, close_policy: bool = False) -> None:
        self._fd = self.seccomp_fd = seccomp_fd
        self._close_policy = close_policy
        # Only the calls this broker was made for: any other notification (a kill the
        # profile turned into user-notify, say) is left to the caller, as a violation.
        self.calls = frozenset(brokered_syscalls(connect, lookups))
        self.policy = policy
        self.unnamed = unnamed
        self.connects = Connects(self, connect_timeout, max_pending)
        self.lookups = Lookups(self)

    # -- which notifications are ours -------------------------------------------------

    def call_of(self, n: Notification) -> str | None:
        """The brokered call `n` is ("open", ..., "connect"), or None: not ours (a
        refused call to report as a violation, a foreign architecture, withdrawn)."""
        if n.withdrawn or n.arch != _sys.AUDIT_ARCH or n.nr & _X32_BIT:
            return None
        call = CALLS.get(n.nr) or LOOKUP_CALLS.get(n.nr)
        return call if call in self.calls else None

    def handle(self, n: Notification) -> bool:
        """Answer `n` if it is a brokered call (True), else leave it (False)."""
        call = self.call_of(n)
        if call is None:
            return False
        try:
            if call == "connect":
                self.connects.connect(n)
            elif call in OPEN_CALLS:
                self._open(n, call)
            else:
                self.lookups.handle(n, call)
        except Withdrawn:
            logger.debug("broker: %s by pid %d was withdrawn before its answer", call, n.pid)
        return True

    # -- open ---------------------------------------------------------------------------

    def read(self, n: Notification, addr: int, size: int) -> bytes:
        try:
            data = _notif.read_memory(n.pid, addr, size)
        except OSError as e:
            self.check_valid(n)
            raise Refused(Decision.refuse(errno.EFAULT, None, f"unreadable: {e.strerror}")) \
                from None
        return data

    def check_valid(self, n: Notification) -> None:
        if not _notif.id_valid(self._fd, n.id):
            raise Withdrawn

    def _open_request(self, n: Notification, call: str) -> tuple[OpenRequest, int]:
        """What the caller asked (read from its memory, checked still valid), and the
        RESOLVE_* flags of its openat2."""
        a = n.args
        dirfd, ptr, flags, mode, resolve = _AT_FDCWD, a[0], a[1], a[2], 0
        if call == "openat":
            dirfd, ptr, flags, mode = a[0], a[1], a[2], a[3]
        elif call == "creat":
            flags, mode = os.O_CREAT | os.O_WRONLY | os.O_TRUNC, a[1]
        elif call == "openat2":
            dirfd, ptr = a[0], a[1]
            if a[3] < _OPEN_HOW.size or a[3] > 4096:
                self.check_valid(n)
                raise Refused(Decision.refuse(errno.EINVAL, None, "open_how of a bad size"))
            how = self.read(n, a[2], a[3])
            if len(how) < a[3]:
                self.check_valid(n)
                raise Refused(Decision.refuse(errno.EFAULT, None, "open_how is unreadable"))
            if any(how[_OPEN_HOW.size:]):
                self.check_valid(n)
                raise Refused(Decision.refuse(errno.E2BIG, None, "open_how with unknown fields"))
            flags, mode, resolve = _OPEN_HOW.unpack_from(how)
        try:
            path = _notif.read_string(n.pid, ptr, PATH_MAX)
        except OSError as e:
            self.check_valid(n)
            raise Refused(Decision.refuse(errno.EFAULT, None, f"path unreadable: {e.strerror}")) \
                from None
        self.check_valid(n)
        if path is None:
            raise Refused(Decision.refuse(errno.ENAMETOOLONG, None,
                                          f"a path of {PATH_MAX} bytes or more"))
        shown = os.fsdecode(path)
        if not shown.startswith("/") and dirfd & 0xFFFFFFFF != _AT_FDCWD:
            shown = f"(fd {dirfd & 0xFFFFFFFF})/{shown}"
        return OpenRequest(shown, flags & 0xFFFFFFFF, mode & 0o7777), resolve

    def read_open(self, n: Notification, call: str) -> OpenCall:
        """Step 1-2 of an open: what the caller asked, read once from its memory and
        checked still valid. Raises Withdrawn when the caller is gone."""
        try:
            req, resolve = self._open_request(n, call)
        except Refused as r:
            return OpenCall(n, call, None, 0, r.decision)
        return OpenCall(n, call, req, resolve, None)

    def answer_open(self, c: OpenCall) -> None:
        """Step 3-4: decide on the copy read, open it with our rights and install it,
        or answer with the refusal's errno. Raises Withdrawn when the caller is gone."""
        audit = self.policy.auditor
        n, req = c.n, c.request
        if req is None or c.refused is not None:
            # Malformed as the kernel would judge it (EFAULT, ENAMETOOLONG...): its answer.
            decision = c.refused or Decision.refuse(errno.EINVAL, None, "unreadable")
            audit.record("open", "transparent", f"({c.call} by pid {n.pid})", decision)
            _notif.respond(self._fd, n.id, error=decision.errno)
            return
        if not self.policy.paths.names(req.path):
            self.answer_unnamed(n, "open", req.path)
            return
        try:
            if c.resolve & ~_RESOLVE_HONOURED:
                raise Refused(Decision.refuse(errno.EACCES, None, "openat2 RESOLVE_* flags "
                                              "other than NO_SYMLINKS/NO_MAGICLINKS"))
            fd, decision = self.policy.paths.open(
                req, no_links=bool(c.resolve & _sys.RESOLVE_NO_SYMLINKS))
        except Refused as r:
            audit.record("open", "transparent", req.path, r.decision)
            _notif.respond(self._fd, n.id, error=r.decision.errno)
            return
        try:
            # Installing and answering in one step: the caller's open() returns this fd.
            installed = _notif.add_fd(self._fd, n.id, fd, cloexec=bool(req.flags & os.O_CLOEXEC),
                                      send=True)
        except OSError as e:  # EMFILE in the caller, say: its own limit, its own answer
            installed = -1
            decision = Decision.refuse(e.errno or errno.EMFILE, decision.rule,
                                       f"allowed, but not installed: {e.strerror}")
            _notif.respond(self._fd, n.id, error=decision.errno)
        finally:
            os.close(fd)
        if installed is None:
            raise Withdrawn
        audit.record("open", "transparent", req.path, decision)

    def _open(self, n: Notification, call: str) -> None:
        self.answer_open(self.read_open(n, call))

    def answer_unnamed(self, n: Notification, kind: Literal["open", "connect"],
                       request: str) -> None:
        """Answer a request no rule names as the embedder chose (`unnamed`)."""
        decision = Decision.refuse(self.unnamed or 0, None,
                                   "no rule names it: " + ("the sandbox's own call runs"
                                                           if self.unnamed is None else
                                                           "refused"))
        self.policy.auditor.record(kind, "transparent", request, decision, unnamed=True)
        if self.unnamed is None:
            _notif.respond(self._fd, n.id, cont=True)
        else:
            _notif.respond(self._fd, n.id, error=self.unnamed)

    # -- connect ------------------------------------------------------------------------

    # -- connect (connects.py) ------------------------------------------------------------

    def fileno(self) -> int:
        """Readable when a connect in progress has completed: then call `ready()`.
        Watch it beside the listener; call `ready()` also by `next_deadline()`."""
        return self.connects.fileno()

    def ready(self) -> None:
        """Answer the connects that completed or passed their deadline."""
        self.connects.ready()

    def pending_fds(self) -> list[int]:
        """Sockets of connects in progress (`fileno()` stands for all of them)."""
        return self.connects.pending_fds()

    def next_deadline(self) -> float | None:
        return self.connects.next_deadline()

    def finish(self, fd: int) -> None:
        """A pending connect's socket became writable: answer its caller."""
        self.connects.finish(fd)

    def expire(self, now: float | None = None) -> None:
        """Answer ETIMEDOUT to the connects whose deadline has passed."""
        self.connects.expire(now)

    def close(self) -> None:
        """Drop the connects in progress (their callers are being killed); with
        `close_policy`, close the policy too (the sandbox's handle owns both)."""
        try:
            self.connects.close()
        finally:
            if self._close_policy:
                self.policy.close()


def serve(broker: TransparentBroker, seccomp_fd: int) -> None:
    """Answer `seccomp_fd`'s brokered calls until no process uses the filter (for
    tests, benches and a broker thread of its own; the supervisor instead feeds
    `handle` from notify.Listener and watches `fileno()` in its loop). A
    notification that is not a brokered call is answered EPERM."""
    while True:
        deadline = broker.next_deadline()
        wait = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000) + 1)
        p = select.poll()
        p.register(seccomp_fd, select.POLLIN)
        p.register(broker.fileno(), select.POLLIN)
        events = dict(p.poll(wait))
        ev = events.get(seccomp_fd, 0)
        if ev & select.POLLIN:
            n = _notif.receive(seccomp_fd)
            if n is not None and not broker.handle(n):
                _notif.respond(seccomp_fd, n.id, error=errno.EPERM)
        elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
            broker.close()
            return
        broker.ready()

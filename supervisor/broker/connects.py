"""The transparent broker's connect: the caller's own connect() answered with a socket
of the supervisor's, connected in the supervisor's network to an address the policy
allows, installed in place of the caller's socket.

Parent, outside the sandbox, with the supervisor's privilege. Used by
transparent.TransparentBroker (see there for the order of the steps): the
sockaddr is read once from the caller and checked still valid; the caller's
socket is looked at through pidfd_getfd (its family, type, protocol, blocking
mode; close-on-exec from its fdinfo); the decision is taken on the address
read (an IPv4-mapped IPv6 address as its IPv4); our own socket of the same
family and type is connected non-blocking, then installed with
SECCOMP_IOCTL_NOTIF_ADDFD | SETFD over the caller's descriptor, and the call
answered 0. Not ADDFD_FLAG_SEND: that would make connect() return the fd
number, and connect returns 0.

What the caller set on its own socket before connect (bind, socket options)
is not carried over: the socket it gets is ours. An AF_INET6 socket with
IPV6_V6ONLY gets a v4-mapped connection all the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import ipaddress
import logging
import os
import select
import socket
import time
from typing import TYPE_CHECKING

from warden.supervisor.broker import _notif
from warden.supervisor.broker._notif import Withdrawn
from warden.supervisor.broker.addresses import IPAddress, Protocol
from warden.supervisor.broker.decision import Decision, Refused
from warden.supervisor.sandbox.notify import Notification

if TYPE_CHECKING:
    from warden.supervisor.broker.transparent import TransparentBroker

logger = logging.getLogger("warden.broker")

_SOCKADDR_MAX = 128  # sizeof(struct sockaddr_storage)
CONNECT_TIMEOUT = 30.0
# Connects in progress at once per sandbox: each holds a socket of the supervisor's
# until it completes; a sandbox with many blocked threads must not fill our fd table.
MAX_PENDING = 64


@dataclasses.dataclass
class _Pending:
    n: Notification
    sock: socket.socket
    target: int
    cloexec: bool
    blocking: bool
    request: str
    decision: Decision
    deadline: float


class Connects:
    """The connects of one TransparentBroker, and those still in progress."""

    def __init__(self, broker: TransparentBroker, timeout: float, max_pending: int) -> None:
        self._b = broker
        self._fd = broker.seccomp_fd
        self.connect_timeout = timeout
        self.max_pending = max_pending
        self._pending: dict[int, _Pending] = {}
        # One descriptor for all the connects in progress, readable (POLLIN) when one
        # of them completes: an event loop that watches readability (wait_readable,
        # asyncio's add_reader) needs nothing else.
        self._epoll = select.epoll()

    def connect(self, n: Notification) -> None:
        """Answer one connect notification (or leave it pending: `pending_fds`)."""
        audit = self._b.policy.auditor
        target, ptr, length = n.args[0] & 0xFFFFFFFF, n.args[1], n.args[2] & 0xFFFFFFFF
        try:
            if not 2 <= length <= _SOCKADDR_MAX:
                self._b.check_valid(n)
                raise Refused(Decision.refuse(errno.EINVAL, None, "a bad sockaddr length"))
            raw = self._b.read(n, ptr, length)
            self._b.check_valid(n)
            if len(raw) < length:
                raise Refused(Decision.refuse(errno.EFAULT, None, "sockaddr unreadable"))
            family = int.from_bytes(raw[:2], "little")
            parsed = _parse_sockaddr(family, raw)
        except Refused as r:
            audit.record("connect", "transparent", f"(connect by pid {n.pid})", r.decision)
            _notif.respond(self._fd, n.id, error=r.decision.errno)
            return
        if parsed is None:  # AF_UNIX, AF_UNSPEC, ...: not an address the broker names
            self._b.answer_unnamed(n, "connect", f"family {family}")
            return
        ip, port, extra = parsed
        request = f"{ip} port {port}"
        try:
            domain, protocol, blocking, cloexec = self._caller_socket(n, target)
            request = f"{ip} port {port}/{protocol}"
            if (domain == socket.AF_INET) != (family == socket.AF_INET):
                raise Refused(Decision.refuse(errno.EAFNOSUPPORT, None,
                                              "the address is not of the socket's family"))
            decision = self._b.policy.addresses.check(ip, port, protocol)
            if not decision.allowed:
                raise Refused(decision)
            if blocking and len(self._pending) >= self.max_pending:
                raise Refused(Decision.refuse(errno.EAGAIN, decision.rule, f"{self.max_pending} "
                                              "connects of this sandbox are in progress"))
        except Refused as r:
            audit.record("connect", "transparent", request, r.decision)
            _notif.respond(self._fd, n.id, error=r.decision.errno)
            return
        sock = socket.socket(domain, socket.SOCK_STREAM if protocol == "tcp" else
                             socket.SOCK_DGRAM)
        sock.setblocking(False)
        err = sock.connect_ex((str(ip), port, *extra))
        pending = _Pending(n, sock, target, cloexec, blocking, request, decision,
                           time.monotonic() + self.connect_timeout)
        if err == errno.EINPROGRESS and blocking:
            self._pending[sock.fileno()] = pending
            self._epoll.register(sock.fileno(), select.EPOLLOUT)
            return
        self._finish_connect(pending, err)

    def _caller_socket(self, n: Notification, target: int) -> tuple[int, Protocol, bool, bool]:
        """Domain, protocol, blocking and close-on-exec of the caller's socket `target`."""
        try:
            pidfd = os.pidfd_open(n.pid)
        except OSError:
            raise Withdrawn from None
        try:
            self._b.check_valid(n)  # the pidfd is of the caller, not of a reused pid
            try:
                copy = _notif.pidfd_getfd(pidfd, target)
            except OSError as e:
                self._b.check_valid(n)
                raise Refused(Decision.refuse(e.errno or errno.EBADF, None,
                                              "not an open descriptor")) from None
        finally:
            os.close(pidfd)
        try:
            try:
                s = socket.socket(fileno=os.dup(copy))
            except OSError:
                raise Refused(Decision.refuse(errno.ENOTSOCK, None, "not a socket")) from None
            with s:
                stype = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
                proto = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
                domain = s.family
            blocking = not fcntl.fcntl(copy, fcntl.F_GETFL) & os.O_NONBLOCK
        finally:
            os.close(copy)
        if stype == socket.SOCK_STREAM and proto in (0, socket.IPPROTO_TCP):
            protocol: Protocol = "tcp"
        elif stype == socket.SOCK_DGRAM and proto in (0, socket.IPPROTO_UDP):
            protocol = "udp"
        else:
            raise Refused(Decision.refuse(errno.EACCES, None, "only TCP and UDP are brokered"))
        if domain not in (socket.AF_INET, socket.AF_INET6):
            raise Refused(Decision.refuse(errno.EACCES, None, "not an IP socket"))
        return domain, protocol, blocking, _notif.fd_cloexec(n.pid, target)

    def _finish_connect(self, p: _Pending, err: int) -> None:
        audit = self._b.policy.auditor
        try:
            if err not in (0, errno.EINPROGRESS):
                audit.record("connect", "transparent", p.request, Decision.refuse(
                    err, p.decision.rule, f"allowed, but the connection failed: "
                    f"{os.strerror(err)}"))
                _notif.respond(self._fd, p.n.id, error=err)
                return
            # The file description is shared with the caller: its blocking mode first.
            p.sock.setblocking(p.blocking)
            if _notif.add_fd(self._fd, p.n.id, p.sock.fileno(), cloexec=p.cloexec,
                             target=p.target) is None:
                logger.debug("broker: connect by pid %d was withdrawn", p.n.pid)
                return
            audit.record("connect", "transparent", p.request, p.decision)
            _notif.respond(self._fd, p.n.id, error=err)
        except OSError as e:
            _notif.respond(self._fd, p.n.id, error=e.errno or errno.EIO)
        finally:
            p.sock.close()

    def pending_fds(self) -> list[int]:
        return list(self._pending)

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def fileno(self) -> int:
        """Readable when a connect in progress has completed: then call `ready()`."""
        return self._epoll.fileno()

    def ready(self) -> None:
        """Answer every connect that has completed, and those past their deadline."""
        for fd, _ev in self._epoll.poll(0):
            self.finish(fd)
        self.expire()

    def finish(self, fd: int) -> None:
        """A pending connect's socket may have completed: if so, answer its caller."""
        p = self._pending.get(fd)
        if p is None:
            return
        probe = select.poll()
        probe.register(fd, select.POLLOUT)
        if not probe.poll(0):
            return  # still connecting
        self._drop(fd)
        self._finish_connect(p, p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def _drop(self, fd: int) -> None:
        del self._pending[fd]
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)

    def expire(self, now: float | None = None) -> None:
        """Answer ETIMEDOUT to the connects whose deadline has passed."""
        now = time.monotonic() if now is None else now
        for fd, p in list(self._pending.items()):
            if p.deadline <= now:
                self._drop(fd)
                self._finish_connect(p, errno.ETIMEDOUT)

    def close(self) -> None:
        """Drop the connects in progress (their callers are being killed)."""
        for fd, p in list(self._pending.items()):
            self._drop(fd)
            with contextlib.suppress(OSError):
                _notif.respond(self._fd, p.n.id, error=errno.ECONNABORTED)
            p.sock.close()
        self._epoll.close()



def _parse_sockaddr(family: int, raw: bytes) -> tuple[IPAddress, int, tuple[int, ...]] | None:
    """(address, port, (flowinfo, scope_id) for IPv6) of an AF_INET/AF_INET6 sockaddr;
    None for any other family."""
    if family == socket.AF_INET:
        if len(raw) < 16:
            raise Refused(Decision.refuse(errno.EINVAL, None, "a short sockaddr_in"))
        return ipaddress.IPv4Address(raw[4:8]), int.from_bytes(raw[2:4], "big"), ()
    if family == socket.AF_INET6:
        if len(raw) < 24:
            raise Refused(Decision.refuse(errno.EINVAL, None, "a short sockaddr_in6"))
        scope = int.from_bytes(raw[24:28], "little") if len(raw) >= 28 else 0
        return (ipaddress.IPv6Address(raw[8:24]), int.from_bytes(raw[2:4], "big"),
                (int.from_bytes(raw[4:8], "big"), scope))
    return None

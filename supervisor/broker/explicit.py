"""The explicit broker: an ipc interface a worker calls to have a file opened or a
connection made for it, decided by its sandbox's policy.

Both ends import `Broker` (the declaration). The supervisor serves
`BrokerService(policy)` on the worker's channel (or on an endpoint of it) and
grants the permissions `broker.open` and/or `broker.connect`; the worker calls

    with channel.remote.open_read("/data/input.csv") as f: ...
    sock = channel.remote.connect("example.org", 443).socket()

A refused request is a declared error: the call fails with ipc.RemoteError
whose text starts with the errno's name ("EACCES: ..."), and the worker goes
on. A malformed one (a path that is not absolute, 4096 characters or more, or
holds a NUL; a port out of range; an unknown field) is a bad message, as
every invalid frame is: the type is the check, before any handler runs.

Parent side, asyncio: opens never wait (O_NONBLOCK, see paths.py); name
resolution runs in the loop's executor and connects are awaited with a
deadline, so a slow name server or a black-holed address stalls only that
call, never the supervisor.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Annotated, Literal

import msgspec

from warden import ipc
from warden.supervisor.broker.addresses import sockaddr
from warden.supervisor.broker.decision import Decision, Refused
from warden.supervisor.broker.paths import PATH_MAX, OpenRequest
from warden.supervisor.broker.policy import Policy

BrokerPath = Annotated[str, msgspec.Meta(min_length=1, max_length=PATH_MAX - 1,
                                         pattern=r"\A/[^\x00]*\Z")]
Host = Annotated[str, msgspec.Meta(min_length=1, max_length=253,
                                   pattern=r"\A[A-Za-z0-9_.:-]+\Z")]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
CONNECT_TIMEOUT = 30.0


class Broker(ipc.Interface, name="warden.Broker"):
    """Served by the supervisor: files and connections by the sandbox's policy."""

    @ipc.call(permission="broker.open")
    def open_read(self, ctx: ipc.Context, path: BrokerPath) -> ipc.ReadFile:
        """`path` opened for reading (a rule with `read` must name it)."""
        raise NotImplementedError

    @ipc.call(permission="broker.open")
    def open_write(self, ctx: ipc.Context, path: BrokerPath, create: bool = False,
                   truncate: bool = False, append: bool = False,
                   read: bool = False) -> ipc.WriteFile:
        """`path` opened for writing (and reading with `read`): `create` makes it if
        missing (the rule needs `create`), `truncate` empties it (`truncate`)."""
        raise NotImplementedError

    @ipc.call(permission="broker.connect")
    def connect(self, ctx: ipc.Context, host: Host, port: Port,
                protocol: Literal["tcp", "udp"] = "tcp") -> ipc.Socket:
        """A socket connected to `host` (an IP, or a name the supervisor resolves:
        every address it resolves to must be allowed) on `port`."""
        raise NotImplementedError


def _failed(decision: Decision) -> ipc.CallFailed:
    name = errno.errorcode.get(decision.errno, str(decision.errno))
    return ipc.CallFailed(f"{name}: {decision.reason}")


def refusal_errno(error: ipc.RemoteError) -> int:
    """The errno a refusal from the broker names (EACCES if it names none)."""
    name = str(error).split(":", 1)[0]
    return int(getattr(errno, name, errno.EACCES)) if name.startswith("E") else errno.EACCES


class BrokerService(Broker):
    """The supervisor's implementation, deciding by one sandbox's `Policy`."""

    def __init__(self, policy: Policy, *, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.policy = policy
        self.connect_timeout = connect_timeout

    def _open(self, path: str, flags: int) -> int:
        audit = self.policy.auditor
        try:
            fd, decision = self.policy.paths.open(OpenRequest(path, flags))
        except Refused as r:
            audit.record("open", "explicit", path, r.decision)
            raise _failed(r.decision) from None
        audit.record("open", "explicit", path, decision)
        return fd

    async def open_read(self, ctx: ipc.Context, path: str) -> ipc.ReadFile:  # type: ignore[override]
        return ipc.ReadFile(self._open(path, os.O_RDONLY))

    async def open_write(self, ctx: ipc.Context, path: str, create: bool = False,  # type: ignore[override]
                         truncate: bool = False, append: bool = False,
                         read: bool = False) -> ipc.WriteFile:
        flags = (os.O_RDWR if read else os.O_WRONLY) | (os.O_CREAT if create else 0) | (
            os.O_TRUNC if truncate else 0) | (os.O_APPEND if append else 0)
        return ipc.WriteFile(self._open(path, flags))

    async def connect(self, ctx: ipc.Context, host: str, port: int,  # type: ignore[override]
                      protocol: Literal["tcp", "udp"] = "tcp") -> ipc.Socket:
        audit = self.policy.auditor
        request = f"{host} port {port}/{protocol}"
        loop = asyncio.get_running_loop()
        try:
            addrs, decision = await loop.run_in_executor(
                None, self.policy.addresses.resolve, host, port, protocol)
        except Refused as r:
            audit.record("connect", "explicit", request, r.decision)
            raise _failed(r.decision) from None
        err = errno.ECONNREFUSED
        for ip in addrs:
            family, addr = sockaddr(ip, port)
            sock = socket.socket(family, socket.SOCK_STREAM if protocol == "tcp"
                                 else socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, addr), self.connect_timeout)
            except OSError as e:  # TimeoutError too (errno None): the deadline passed
                sock.close()
                err = e.errno or errno.ETIMEDOUT
                continue
            except BaseException:
                sock.close()
                raise
            sock.setblocking(True)
            audit.record("connect", "explicit", request, decision)
            return ipc.Socket(sock.detach())
        failed = Decision.refuse(err, decision.rule,
                                 f"allowed, but the connection failed: {os.strerror(err)}")
        audit.record("connect", "explicit", request, failed)
        raise _failed(failed)


__all__ = ["Broker", "BrokerPath", "BrokerService", "Host", "Port", "refusal_errno"]

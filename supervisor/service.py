"""The named-socket service: outside processes call `warden serve`'s pools by role.

    [service]
    socket = "/run/warden/thumbs.service"   # or: abstract = "warden-thumbs"
    mode = 0o660                            # of the socket file (default 0o600)
    group = "thumbs"                        # its group (name or gid); owner = ... as root
    backlog = 64                            # connects the kernel queues before we accept
    max_connections = 256                   # open connections, all uids together
    max_connections_per_uid = 16
    max_calls_per_connection = 8
    idle_timeout = 60                       # seconds a connection may stay with no call

    [roles.reader]                          # matched in file order, the first one wins
    uids = [4242]                           # the peer's uid (SO_PEERCRED) ...
    gids = []                               # ... or its gid ...
    groups = ["thumbs"]                     # ... or a group of that uid (the group database)
    pools = ["thumbs"]                      # whose methods it may call

    [roles.admin]
    uids = [0]
    pools = ["thumbs"]
    admin = true                            # and warden.status, warden.restart

Each accepted connection is identified by the kernel only: SO_PEERCRED (the
uid, gid and pid of the process that connected) and a pidfd of that process
(SO_PEERPIDFD, or pidfd_open of the pid checked against the credentials). No
message carries an identity. The role that matches binds its interface on the
connection: one ipc interface, named "warden.service", whose methods are
"POOL.METHOD" for each pool the role names, plus "warden.describe" (and
"warden.status", "warden.restart" for admin roles). Method ids derive from those names, so a
method of another role's interface is an unknown method id on this
connection: a bad message, the connection is closed and the refusal recorded.

Clients: `connect(path, pools={"thumbs": Thumbnailer})` (Python), and
`warden call SOCKET METHOD [ARGS...]` (supervisor/call_cli.py). See docs/service.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import grp
import json
import logging
import os
import pwd
import re
import signal
import socket
import stat
import struct
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from warden import ipc
from warden.errors import InvalidInput
from warden.supervisor.process import status_ids
from warden.supervisor.sandbox import hostpath
from warden.supervisor.sandbox.lowlevel import close_all

if TYPE_CHECKING:
    from warden.supervisor.pool import Pool

log = logging.getLogger("warden.service")

WIRE_NAME = "warden.service"  # the one interface name of every role: ids are role-independent
BUILTIN = "warden"            # the prefix of the service's own methods (a reserved pool name)
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5
_CRED = struct.Struct("3i")


# ---- the config sections ([service], [roles.NAME]) ------------------------------------
Count = Annotated[int, msgspec.Meta(ge=1, le=1 << 16)]
GroupRef = Annotated[str, msgspec.Meta(min_length=1)] | Annotated[int, msgspec.Meta(ge=0)]


class ServiceSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    socket: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    abstract: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o777)] = 0o600
    owner: GroupRef | None = None
    group: GroupRef | None = None
    backlog: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    max_connections: Count = 256
    max_connections_per_uid: Count = 16
    max_calls_per_connection: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 8
    idle_timeout: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60.0


class RoleSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    uids: tuple[Annotated[int, msgspec.Meta(ge=0)], ...] = ()
    gids: tuple[Annotated[int, msgspec.Meta(ge=0)], ...] = ()
    groups: tuple[GroupRef, ...] = ()
    pools: tuple[str, ...] = ()
    admin: bool = False
    permissions: tuple[str, ...] = ()  # granted for methods declared with permission=


@dataclass(frozen=True)
class Role:
    name: str
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    groups: frozenset[int] = frozenset()  # gids, names resolved when the config is loaded
    pools: tuple[str, ...] = ()
    admin: bool = False
    permissions: frozenset[str] = frozenset()

    def matches(self, uid: int, gid: int, groups: Callable[[], frozenset[int]]) -> bool:
        if uid in self.uids or gid in self.gids:
            return True
        return bool(self.groups) and bool(self.groups & groups())


@dataclass(frozen=True)
class ServiceConfig:
    path: str | None          # a socket path, or
    abstract: str | None      # an abstract name (no file, no permissions: roles still apply)
    mode: int = 0o600
    owner: int | None = None
    group: int | None = None
    backlog: int = 64
    max_connections: int = 256
    max_connections_per_uid: int = 16
    max_calls_per_connection: int = 8
    # A connection with no call running and none received for this long is closed, so
    # a client that connects and never sends does not hold a slot (per uid, in all).
    idle_timeout: float = 60.0
    roles: tuple[Role, ...] = field(default_factory=tuple)

    @property
    def address(self) -> str:
        return self.path if self.path is not None else "@" + (self.abstract or "")


def group_id(ref: str | int) -> int:
    """A group name or gid as a gid (KeyError: no such group)."""
    return ref if isinstance(ref, int) else grp.getgrnam(ref).gr_gid


def user_id(ref: str | int) -> int:
    return ref if isinstance(ref, int) else pwd.getpwnam(ref).pw_uid


def groups_of(uid: int) -> frozenset[int]:
    """The groups of `uid` by the group database (primary and supplementary), read here;
    empty for a uid without a passwd entry."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return frozenset()
    try:
        return frozenset(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except OSError:
        return frozenset({pw.pw_gid})


# ---- the interfaces ---------------------------------------------------------------------
Text = Annotated[str, msgspec.Meta(max_length=1000)]
PoolName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class ParamInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=200)]
    handle: Annotated[str, msgspec.Meta(max_length=64)]  # "" for a value, else the kind
    optional: bool = False  # has a default


class MethodInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=200)]
    params: Annotated[tuple[ParamInfo, ...], msgspec.Meta(max_length=64)]
    oneway: bool
    signature: Text
    returns_handle: Annotated[str, msgspec.Meta(max_length=64)] = ""


Methods = Annotated[tuple[MethodInfo, ...], msgspec.Meta(max_length=1024)]


class Builtin(ipc.Interface, name="warden.service.builtin"):
    """The service's own methods, named warden.<method> on a connection."""

    @ipc.call()
    def describe(self, ctx: ipc.Context) -> Methods:
        """The methods this connection's role may call."""
        raise NotImplementedError

    @ipc.call()
    def status(self, ctx: ipc.Context) -> Annotated[str, msgspec.Meta(max_length=1 << 20)]:
        """The server's status snapshot as JSON text (admin roles only)."""
        raise NotImplementedError

    @ipc.call()
    def restart(self, ctx: ipc.Context, pool: PoolName) -> Annotated[int, msgspec.Meta(ge=0)]:
        """Replace every worker of `pool` (admin roles only); calls in flight on them
        fail with an error naming the restart. Returns how many were replaced."""
        raise NotImplementedError


def _renamed(func: Any, name: str) -> Any:
    """A copy of a declared method under another name (its options, annotations and
    globals kept, so the declaration checks it exactly as the original)."""
    f = types.FunctionType(func.__code__, func.__globals__, name, func.__defaults__,
                           func.__closure__)
    f.__dict__.update(func.__dict__)
    f.__annotations__ = dict(func.__annotations__)
    f.__kwdefaults__ = func.__kwdefaults__
    f.__module__, f.__qualname__, f.__doc__ = func.__module__, name, func.__doc__
    return f


def service_interface(pools: Mapping[str, type[ipc.Interface]], *, admin: bool = False,
                      label: str = "Role") -> type[ipc.Interface]:
    """The interface a role binds: POOL.METHOD for each pool's methods, warden.describe,
    and warden.status if `admin`. Both ends build it the same way; a method's id depends
    only on its pool's name and its own, never on the role."""
    ns: dict[str, Any] = {"__module__": __name__}
    own = [("describe", Builtin.describe)] + (
        [("status", Builtin.status), ("restart", Builtin.restart)] if admin else [])
    for name, func in own:
        ns[f"{BUILTIN}.{name}"] = _renamed(func, f"{BUILTIN}.{name}")
    for pool, iface in pools.items():
        if pool == BUILTIN:
            raise InvalidInput(f"a pool may not be named {BUILTIN!r} (the service's methods)")
        if iface.__ipc_initial_state__ is not None:
            raise InvalidInput(f"pool {pool!r}: {iface.__ipc_name__} has protocol states; "
                               "a service connection cannot keep one state per pool")
        for method in iface.__ipc_methods__:
            ns[f"{pool}.{method}"] = _renamed(vars(iface)[method], f"{pool}.{method}")
    return types.new_class(label, (ipc.Interface,), {"name": WIRE_NAME},
                           lambda body: body.update(ns))


def describe(iface: type[ipc.Interface]) -> tuple[MethodInfo, ...]:
    out = []
    for name, spec in iface.__ipc_methods__.items():
        params = []
        for p in spec.signature.parameters.values():
            h = next((h for h in spec.handles if h.name == p.name), None)
            params.append(ParamInfo(p.name, h.cls.__name__ if h else "",
                                    p.default is not p.empty))
        rh = spec.result_handle
        out.append(MethodInfo(name=name, params=tuple(params), oneway=spec.oneway,
                              signature=f"{name}{spec.signature}"[:1000],
                              returns_handle=rh.cls.__name__ if rh else ""))
    return tuple(out)


# ---- peer identity ------------------------------------------------------------------------
@dataclass
class Peer:
    pid: int
    uid: int
    gid: int
    pidfd: int  # -1: the process was already gone


def peer_of(conn: socket.socket) -> Peer:
    """The kernel's account of who connected: SO_PEERCRED and a pidfd of that process."""
    pid, uid, gid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                 _CRED.size))
    try:
        pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:  # before Linux 6.5: pidfd_open, checked against the credentials
        pidfd = _pidfd_checked(pid, uid)
    return Peer(pid, uid, gid, pidfd)


def _pidfd_checked(pid: int, uid: int) -> int:
    """pidfd_open(pid), kept only if that process still runs as `uid` (read after the
    pidfd pins it; a pid reused by a process of another uid is not taken for the peer)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return -1
    try:
        uids, _gids = status_ids(pid)
        # Still running after the read: then /proc/PID was this pidfd's process.
        signal.pidfd_send_signal(fd, 0)
        if uid in (uids[0], uids[1]):
            return fd
    except (OSError, ValueError, IndexError):
        pass
    os.close(fd)
    return -1


# ---- the listener --------------------------------------------------------------------------
@dataclass(eq=False)
class Connection:
    peer: Peer
    role: Role
    channel: ipc.AsyncChannel | None = None
    # For the idle timeout: calls running now, and when the last one began or ended.
    calls: int = 0
    last_active: float = field(default_factory=time.monotonic)
    idle_timer: asyncio.TimerHandle | None = None

    def active(self) -> None:
        self.last_active = time.monotonic()


class Service:
    """Accepts on the service socket, binds each connection's role, counts and records."""

    def __init__(self, cfg: ServiceConfig, pools: Mapping[str, Pool[Any]],
                 status: Callable[[], dict[str, Any]]) -> None:
        self.cfg = cfg
        self.pools = dict(pools)
        self._status = status
        self.listener: socket.socket | None = None
        self.connections: set[Connection] = set()
        self.per_uid: collections.Counter[int] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=256)
        self.served = 0
        self._last_refusal_log = -1e9
        self._quiet_refusals = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._ifaces: dict[str, type[ipc.Interface]] = {}
        self._methods: dict[str, tuple[MethodInfo, ...]] = {}
        self.idle_closed = 0
        self.limits = ipc.Limits(max_calls_in_flight=cfg.max_calls_per_connection,
                                 max_fds_held=max(8, cfg.max_calls_per_connection * 8))
        self._need_groups = any(r.groups for r in cfg.roles)
        for role in cfg.roles:
            for p in role.pools:
                if p not in self.pools:
                    raise InvalidInput(f"roles.{role.name}.pools: no pool named {p!r}")
            iface = service_interface({p: self.pools[p].interface for p in role.pools},
                                      admin=role.admin, label=f"Role_{role.name}")
            self._ifaces[role.name] = iface
            self._methods[role.name] = describe(iface)

    # -- the role's implementation: forwards POOL.METHOD to the pool ------------------------
    def _implement(self, c: Connection) -> ipc.Interface:
        """The role's interface served on one connection (its handlers mark the
        connection active, for the idle timeout)."""
        role = c.role
        iface = self._ifaces[role.name]
        impl = iface()
        methods = self._methods[role.name]
        setattr(impl, f"{BUILTIN}.describe", self._counted(c, lambda ctx: methods))
        if role.admin:
            setattr(impl, f"{BUILTIN}.status", self._counted(
                c, lambda ctx: json.dumps(self.status(), sort_keys=True)))
            setattr(impl, f"{BUILTIN}.restart",
                    self._counted(c, functools.partial(self._restart, c)))
        for qual in iface.__ipc_methods__:
            pool_name, _, method = qual.partition(".")
            if pool_name != BUILTIN:
                setattr(impl, qual, self._forward(c, self.pools[pool_name], method))
        return impl

    @staticmethod
    def _counted(c: Connection, func: Callable[..., Any]) -> Callable[..., Any]:
        def handler(ctx: ipc.Context, *args: Any) -> Any:
            c.active()
            return func(ctx, *args)
        return handler

    def _restart(self, c: Connection, ctx: ipc.Context, pool: str) -> int:
        """warden.restart (admin roles): the pool's workers replaced."""
        if pool not in c.role.pools:
            raise ipc.CallFailed(f"warden.restart: role {c.role.name} has no pool "
                                 f"named {pool!r}")
        n = self.pools[pool].replace_workers(f"pool {pool} restarted by uid {c.peer.uid} "
                                     f"(role {c.role.name}, warden.restart)")
        self._record("restart", uid=c.peer.uid, pid=c.peer.pid, role=c.role.name,
                     pool=pool, workers=n)
        return n

    @staticmethod
    def _forward(c: Connection, pool: Pool[Any], method: str) -> Callable[..., Any]:
        from warden.errors import WardenError

        async def handler(ctx: ipc.Context, *args: Any) -> Any:
            c.calls += 1
            c.active()
            try:
                return await pool.call(method, *args)  # the pool's own deadline
            except ipc.RemoteError as e:
                raise ipc.CallFailed(str(e)) from None
            except WardenError as e:  # no worker in time, a worker died, the pool failed
                raise ipc.CallFailed(f"{pool.name}.{method}: {e}") from None
            finally:
                c.calls -= 1
                c.active()
                for a in args:  # the client's fds: the worker has its own copies by now
                    if isinstance(a, ipc.Handle):
                        a.close()
        return handler

    # -- the idle timeout --------------------------------------------------------------------
    def _watch_idle(self, c: Connection, delay: float) -> None:
        c.idle_timer = asyncio.get_running_loop().call_later(delay, self._check_idle, c)

    def _check_idle(self, c: Connection) -> None:
        """No call running and none begun or ended for idle_timeout: close it, recorded.
        Otherwise look again when it could first be idle that long."""
        c.idle_timer = None
        if c.channel is None or c.channel.closed:
            return
        idle = time.monotonic() - c.last_active
        limit = self.cfg.idle_timeout
        if c.calls or idle < limit:
            self._watch_idle(c, limit - idle if not c.calls else limit)
            return
        self.idle_closed += 1
        self._record("idle", uid=c.peer.uid, pid=c.peer.pid, role=c.role.name,
                     reason=f"no call for {limit:g}s (idle_timeout): disconnected")
        c.channel.close()

    # -- accepting -------------------------------------------------------------------------
    def start(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self.listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._on_acceptable)

    def _on_acceptable(self) -> None:
        assert self.listener is not None
        for _ in range(64):  # bounded per wakeup: the loop serves the open connections too
            try:
                conn, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: refuse by not accepting for now
                log.warning("service: accept failed: %s", e)
                self._pause_accepting(0.1)
                return
            self._admit(conn)

    def _pause_accepting(self, delay: float) -> None:
        assert self.listener is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.listener.fileno())
        loop.call_later(delay, self._resume)

    def _resume(self) -> None:
        if self.listener is not None and self.listener.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self.listener.fileno(),
                                                  self._on_acceptable)

    def _refuse(self, conn: socket.socket, why: str, kind: str, uid: int, pid: int) -> None:
        conn.close()
        self.refused[kind] += 1
        self._record("refused", uid=uid, pid=pid, reason=why)

    def _record(self, what: str, **fields: Any) -> None:
        rec = {"time": time.time(), "event": what, **fields}
        self.records.append(rec)
        if what == "refused":  # a flood must not flood the log: one line a second
            now = time.monotonic()
            if now - self._last_refusal_log < 1.0:
                self._quiet_refusals += 1
                return
            self._last_refusal_log = now
            if self._quiet_refusals:
                fields = {**fields, "not_logged_since_last": self._quiet_refusals}
                self._quiet_refusals = 0
        log.warning("service: %s: %s", what, " ".join(f"{k}={v}" for k, v in fields.items()))

    def _admit(self, conn: socket.socket) -> None:
        try:
            pid, uid, gid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET,
                                                         socket.SO_PEERCRED, _CRED.size))
        except OSError:
            conn.close()
            return
        # The limits first: a refused connect costs one accept and one close, nothing more.
        if len(self.connections) >= self.cfg.max_connections:
            self._refuse(conn, f"{self.cfg.max_connections} connections open (max_connections)",
                         "max_connections", uid, pid)
            return
        if self.per_uid[uid] >= self.cfg.max_connections_per_uid:
            self._refuse(conn, f"uid {uid} has {self.per_uid[uid]} connections open "
                         "(max_connections_per_uid)", "max_connections_per_uid", uid, pid)
            return
        groups: frozenset[int] | None = None

        def lookup() -> frozenset[int]:
            nonlocal groups
            if groups is None:
                groups = groups_of(uid)
            return groups

        role = next((r for r in self.cfg.roles if r.matches(uid, gid, lookup)), None)
        if role is None:
            self._refuse(conn, f"no role for uid {uid} gid {gid}", "no_role", uid, pid)
            return
        try:
            peer = peer_of(conn)
        except OSError:
            conn.close()
            return
        c = Connection(peer, role)
        try:
            c.channel = ipc.attach(
                conn, peer_id=f"uid {uid} pid {peer.pid} role {role.name}",
                serve=self._implement(c), granted=role.permissions, pid=peer.pid,
                extra={"role": role.name, "uid": uid, "gid": gid}, limits=self.limits,
                on_bad_message=functools.partial(self._misbehaved, c, "bad message"),
                on_cut_off=functools.partial(self._misbehaved, c, "cut off"))
        except Exception:
            close_all([peer.pidfd] if peer.pidfd >= 0 else [])
            conn.close()
            raise
        self.connections.add(c)
        self._watch_idle(c, self.cfg.idle_timeout)
        self.per_uid[uid] += 1
        self.served += 1
        task = asyncio.get_running_loop().create_task(self._closed(c))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _misbehaved(self, c: Connection, what: str, why: ipc.PeerError) -> None:
        method = getattr(why, "method", None)
        if method is None:  # an id outside the role's interface: the reason names it
            m = re.search(r"method id (0x[0-9a-f]+)", str(why))
            method = m.group(1) if m else None
        self._record(what, uid=c.peer.uid, pid=c.peer.pid, role=c.role.name,
                     method=method, reason=getattr(why, "reason", str(why)))

    async def _closed(self, c: Connection) -> None:
        assert c.channel is not None
        try:
            await c.channel.wait_closed()
        finally:
            if c.idle_timer is not None:
                c.idle_timer.cancel()
                c.idle_timer = None
            self.connections.discard(c)
            self.per_uid[c.peer.uid] -= 1
            if self.per_uid[c.peer.uid] <= 0:
                del self.per_uid[c.peer.uid]
            if c.peer.pidfd >= 0:
                os.close(c.peer.pidfd)
                c.peer.pidfd = -1

    def status(self) -> dict[str, Any]:
        out = dict(self._status())
        out["service"] = {
            "address": self.cfg.address, "connections": len(self.connections),
            "per_uid": {str(u): n for u, n in sorted(self.per_uid.items())},
            "accepted": self.served, "refused": dict(self.refused),
            "idle_closed": self.idle_closed,
            "records": list(self.records)[-32:],
        }
        return out

    async def aclose(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.listener.fileno())
        for c in list(self.connections):
            if c.channel is not None:
                c.channel.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# ---- the client -------------------------------------------------------------------------
class ServiceRefused(ipc.ChannelClosed):
    """The service closed the connection without answering: no role for this uid, over its
    connection limits, or a message it refused (the service's log says which)."""


def open_socket(address: str, *, server_uids: Sequence[int] | None = None,
                timeout: float | None = None) -> socket.socket:
    """A connected SOCK_SEQPACKET socket to a service: a path (resolved with no link
    followed, connected through that fd) or "@name" (abstract). The service must run as
    one of `server_uids` (default: us or root), by its SO_PEERCRED."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        if address.startswith("@"):
            s.connect("\0" + address[1:])
        else:
            fd, st = hostpath.open_path(os.path.abspath(address), "service socket")
            try:
                if not stat.S_ISSOCK(st.st_mode):
                    raise hostpath.HostPathError(errno.ENOTSOCK, f"service socket: {address} "
                                                 "is not a socket", address)
                s.connect(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
        _pid, uid, _gid = _CRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                    _CRED.size))
        allowed = (os.geteuid(), 0) if server_uids is None else tuple(server_uids)
        if uid not in allowed:
            raise hostpath.HostPathError(errno.EPERM, f"service socket: {address} was "
                                         f"refused: the server on it runs as uid {uid}, not "
                                         f"as {' or '.join(map(str, allowed))}", address)
        s.settimeout(None)
        return s
    except BaseException:
        s.close()
        raise


class _PoolProxy:
    def __init__(self, client: ServiceClient, pool: str) -> None:
        self._client, self._pool = client, pool

    def __getattr__(self, method: str) -> Callable[..., Any]:
        return lambda *a, **kw: self._client.call(f"{self._pool}.{method}", *a, **kw)


class ServiceClient:
    """A blocking connection to a service; typed by the pools' interfaces the caller names.

        with service.connect("/run/warden/thumbs.service",
                             pools={"thumbs": Thumbnailer}) as svc:
            t = svc.pool("thumbs").thumbnail(fd)        # or svc.call("thumbs.thumbnail", fd)
    """

    def __init__(self, sock: socket.socket, pools: Mapping[str, type[ipc.Interface]],
                 admin: bool, validate_outgoing: bool = True) -> None:
        self.interface = service_interface(pools, admin=admin, label="Client")
        self.channel = ipc.connect(sock, remote=self.interface, peer_id="service",
                                   granted=(), validate_outgoing=validate_outgoing)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.channel.remote, method)(*args, **kwargs)
        except (ipc.ChannelClosed, BrokenPipeError, ConnectionResetError) as e:
            raise ServiceRefused(
                f"the service closed the connection during {method}(): no role for this "
                "uid, over its connection limits, or a call it refused (see its log)"
            ) from e

    def pool(self, name: str) -> Any:
        return _PoolProxy(self, name)

    def describe(self) -> tuple[MethodInfo, ...]:
        result: tuple[MethodInfo, ...] = self.call(f"{BUILTIN}.describe")
        return result

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.call(f"{BUILTIN}.status"))
        return result

    def restart(self, pool: str) -> int:
        """Replace every worker of `pool` (an admin role's method); how many were."""
        result: int = self.call(f"{BUILTIN}.restart", pool)
        return result

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(address: str, *, pools: Mapping[str, type[ipc.Interface]] | None = None,
            admin: bool = False, server_uids: Sequence[int] | None = None,
            timeout: float | None = 10.0, validate_outgoing: bool = True) -> ServiceClient:
    """Connect to `warden serve`'s service socket (a path, or "@name" for an abstract one).

    pools: {pool name: its interface} for the pools you will call (typed, checked before
    sending); admin: include warden.status. What you may call is decided by the service
    from your uid/gid, never by this list: a method outside your role closes the
    connection (ServiceRefused)."""
    sock = open_socket(address, server_uids=server_uids, timeout=timeout)
    return ServiceClient(sock, dict(pools or {}), admin, validate_outgoing)

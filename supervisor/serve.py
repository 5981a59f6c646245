"""`warden serve CONFIG.toml`: named worker pools from a file, in the foreground.

The config's format and checks are in warden.supervisor.serve_config (and
docs/supervisor.md). Status: SIGUSR1 logs a JSON snapshot; `warden status
CONFIG.toml` asks the running server over its unix socket (mode 0600).
SIGTERM/SIGINT shut down cleanly: every pool is terminated (grace, then kill)
and the zygote stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import stat
import struct
import sys
from collections.abc import Callable
from typing import Any

from warden.errors import InvalidInput
from warden.supervisor.core import Supervisor
from warden.supervisor.sandbox import hostpath
from warden.supervisor.serve_config import MODULE_OPTIONS, ConfigError, ServeConfig
from warden.supervisor.service import (
    Service,
    ServiceConfig,
)
from warden.supervisor.worker_main import resolve

log = logging.getLogger("warden.serve")


async def serve(cfg: ServeConfig, *, ready: asyncio.Event | None = None) -> int:
    """Run the pools until SIGTERM/SIGINT; returns the exit code."""
    stop = asyncio.Event()
    preload = list(cfg.preload) + [p.module.partition(":")[0] for p in cfg.pools if p.module]
    # The workers' modules are imported from the config's code paths: here (to
    # resolve the interfaces) and in the workers, which get them bound read-only.
    sys.path[:0] = [p for p in cfg.code_paths if p not in sys.path]
    # First, so a socket path that is refused fails before any worker starts.
    place = StatusSocket.place(cfg.status_socket)
    svc_place: StatusSocket | None = None
    try:
        if cfg.service is not None and cfg.service.path is not None:
            svc_place = StatusSocket.place(cfg.service.path, what="service.socket")
        sup = Supervisor(start_method=cfg.start_method, zygote=cfg.start_method == "zygote",
                         zygote_preload=preload, code_paths=cfg.code_paths)
        return await _serve(cfg, sup, place, svc_place, stop, ready)
    finally:
        place.remove()
        if svc_place is not None:
            svc_place.remove()


async def _serve(cfg: ServeConfig, sup: Supervisor, place: StatusSocket,
                 svc_place: StatusSocket | None, stop: asyncio.Event,
                 ready: asyncio.Event | None) -> int:
    loop = asyncio.get_running_loop()
    pools: dict[str, Any] = {}
    service: Service | None = None
    async with sup:
        for pc in cfg.pools:
            try:
                iface = resolve(pc.interface)
            except (ImportError, AttributeError, ValueError) as e:
                raise ConfigError(f"{cfg.path}: pools.{pc.name}.interface: {e}") from None
            # A program pool's options go to build_spec as they are; a module pool's
            # workers are started by the supervisor, which takes the profile and memory.
            kw: dict[str, Any] = {"options": pc.options} if pc.program else \
                {k: v for k, v in pc.options.changed().items() if k in MODULE_OPTIONS}
            kw.setdefault("profile", pc.profile)
            if pc.broker is not None:
                kw["broker"] = pc.broker
            pools[pc.name] = await sup.pool(
                iface, pc.module if pc.module else list(pc.program or ()), size=pc.count,
                name=pc.name, restart=pc.restart, call_timeout=pc.call_timeout, **kw)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning(
            "status: %s", json.dumps(sup.status(), sort_keys=True)))
        status = sup.status
        if cfg.service is not None:
            try:
                service = Service(cfg.service, pools, sup.status)
            except InvalidInput as e:
                raise ConfigError(f"{cfg.path}: {e}") from None
            service.start(_service_socket(cfg.service, svc_place))
            status = service.status
            log.info("service socket %s: %d role(s)", cfg.service.address,
                     len(cfg.service.roles))
        server = await _status_server(place, status)
        log.info("serving %d pool(s); status socket %s", len(cfg.pools), cfg.status_socket)
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            server.close()
            if service is not None:
                await service.aclose()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
    return 0


class StatusSocket:
    """The status socket, made in a directory held by an O_PATH fd.

    Parent, with the server's own rights. The directory is resolved once with
    no link followed and must be one no other user can swap names in: owned
    by us or root, and writable by group or others only with the sticky bit.
    A name already there is reused only if it is a socket of ours (a previous
    server's); anything else is refused, never unlinked. The socket is bound
    through the fd's /proc link (so the directory is not looked up again),
    mode 0600, and removed at the end only if the name still holds it.
    """

    WHAT = "supervisor.status_socket"

    def __init__(self, path: str, dir_fd: int, name: str, what: str = WHAT) -> None:
        self.path, self.dir_fd, self.name, self.WHAT = path, dir_fd, name, what
        self.sock: socket.socket | None = None
        self.ident = (0, 0)

    @classmethod
    def place(cls, path: str, what: str = WHAT) -> StatusSocket:
        """Check where the socket goes (before any worker starts); `bind` makes it.

        Raises ConfigError, one sentence naming the path, when the place is refused."""
        parent, name = os.path.split(os.path.abspath(path))
        try:
            dir_fd, st = hostpath.open_path(parent or "/", what)
        except hostpath.HostPathError as e:
            raise ConfigError(str(e)) from None
        problem = _unsafe_dir(st)
        if problem:
            os.close(dir_fd)
            raise ConfigError(f"{what}: {path} was refused: its directory {parent} "
                              f"{problem}; put the socket in a directory only you can write")
        out = cls(path, dir_fd, name, what)
        try:
            out._stale()
        except BaseException:
            os.close(dir_fd)
            raise
        return out

    def _stale(self) -> bool:
        """True if the name holds a previous server's socket (ours); refuses anything else."""
        try:
            old = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not (stat.S_ISSOCK(old.st_mode) and old.st_uid == os.geteuid()):
            raise ConfigError(f"{self.WHAT}: {self.path} was refused: it exists and is not a "
                              "socket of ours; remove it or choose another path")
        return True

    def bind(self, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """Make the socket (mode 0600), replacing a previous server's."""
        if self._stale():
            # Its name is ours, in a directory where nobody else may rename or
            # remove entries, so this removes that very socket.
            os.unlink(self.name, dir_fd=self.dir_fd)
        sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
        umask = os.umask(0o177)
        try:
            sock.bind(f"/proc/self/fd/{self.dir_fd}/{self.name}")
        except OSError as e:
            sock.close()
            raise ConfigError(f"{self.WHAT}: {self.path}: {e.strerror}") from None
        finally:
            os.umask(umask)
        self.sock = sock
        self.ident = hostpath.identity(os.stat(self.name, dir_fd=self.dir_fd,
                                               follow_symlinks=False))
        return sock

    def remove(self) -> None:
        """Close it and remove its name, if the name is still this socket."""
        if self.sock is not None:
            self.sock.close()
            with contextlib.suppress(OSError):
                st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
                if hostpath.identity(st) == self.ident:
                    os.unlink(self.name, dir_fd=self.dir_fd)
        with contextlib.suppress(OSError):
            os.close(self.dir_fd)


def _unsafe_dir(st: os.stat_result) -> str:
    """Why another user could swap names in this directory, or ''."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid not in (os.geteuid(), 0):
        return f"belongs to uid {st.st_uid}"
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return "is writable by other users and not sticky"
    return ""


def _service_socket(cfg: ServiceConfig, place: StatusSocket | None) -> socket.socket:
    """The service's listening socket: at its path (made as the status socket is, then
    given the config's owner, group and mode) or at its abstract name."""
    if place is None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.bind("\0" + (cfg.abstract or ""))
        except OSError as e:
            sock.close()
            raise ConfigError(f"service.abstract: @{cfg.abstract}: {e.strerror}") from None
    else:
        sock = place.bind(socket.SOCK_SEQPACKET)
        try:
            if cfg.owner is not None or cfg.group is not None:
                os.chown(place.name, -1 if cfg.owner is None else cfg.owner,
                         -1 if cfg.group is None else cfg.group, dir_fd=place.dir_fd,
                         follow_symlinks=False)
            # Made 0600 by bind; its name is ours in a directory nobody else may change
            # (place checked that), so this is that very socket.
            os.chmod(place.name, cfg.mode, dir_fd=place.dir_fd)
        except OSError as e:
            raise ConfigError(f"service.socket: {cfg.path}: cannot set its owner or mode: "
                              f"{e.strerror}") from None
    sock.listen(cfg.backlog)
    return sock


async def _status_server(place: StatusSocket,
                         status: Callable[[], dict[str, Any]]) -> asyncio.AbstractServer:
    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(json.dumps(status(), sort_keys=True).encode() + b"\n")
            await w.drain()
        finally:
            w.close()

    return await asyncio.start_unix_server(answer, sock=place.bind())


def query_status(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """What `warden status` prints: the running server's snapshot.

    The socket is resolved with no link followed and connected to through
    that fd; the answer counts only if the server runs as us or as root."""
    fd, st = hostpath.open_path(os.path.abspath(path), "status socket")
    try:
        if not stat.S_ISSOCK(st.st_mode):
            raise hostpath.HostPathError(errno.ENOTSOCK, f"status socket: {path} is not a "
                                         "socket", path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(timeout)
            s.connect(f"/proc/self/fd/{fd}")
            cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", cred)
            if uid not in (os.geteuid(), 0):
                raise hostpath.HostPathError(errno.EPERM, f"status socket: {path} was refused: "
                                             f"the server on it runs as uid {uid}, not as you "
                                             "or root", path)
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
    finally:
        os.close(fd)
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result

"""`warden serve CONFIG.toml`: named worker pools from a file, in the foreground.

    [supervisor]
    start_method = "zygote"                 # spawn | zygote | fork
    preload = ["examples.thumbnailer.worker"]   # modules the zygote imports up front
    status_socket = "/run/warden/thumbs.sock"   # for `warden status` (default: beside CONFIG)

    [pools.thumbs]
    interface = "examples.thumbnailer.api:Thumbnailer"
    module = "examples.thumbnailer.worker:ThumbnailerImpl"  # or: program = ["/usr/bin/x"]
    # ro_binds = ["/opt/x"]; env = ["MODE=fast"]   (program pools: what to bind, set)
    profile = "strict"
    count = 2
    restart = "on-failure"                  # never | on-failure | always
    backoff = 0.1                           # seconds, doubled per consecutive failure
    max_backoff = 5
    crash_loop_limit = 10                   # restarts within crash_loop_window seconds
    crash_loop_window = 30
    call_timeout = 5                        # seconds per call (pool.call)
    memory = "256M"                         # spawn/program workers: cgroup; others: RLIMIT_AS

Status: SIGUSR1 logs a JSON snapshot; `warden status CONFIG.toml` asks the
running server over its unix socket (mode 0600). SIGTERM/SIGINT shut down
cleanly: every pool is terminated (grace, then kill) and the zygote stopped.
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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warden.supervisor.core import START_METHODS, Supervisor
from warden.supervisor.pool import RESTART_MODES, RestartPolicy
from warden.supervisor.sandbox import hostpath
from warden.supervisor.worker_main import resolve

log = logging.getLogger("warden.serve")


class ConfigError(ValueError):
    """A serve config is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class PoolConfig:
    name: str
    interface: str
    module: str | None
    program: tuple[str, ...] | None
    profile: str
    count: int
    restart: RestartPolicy
    call_timeout: float | None
    memory: int | None
    ro_binds: tuple[str, ...] = ()
    env: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServeConfig:
    path: str
    start_method: str
    preload: tuple[str, ...]
    status_socket: str
    pools: tuple[PoolConfig, ...] = field(default_factory=tuple)


_SIZES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_POOL_KEYS = {"interface", "module", "program", "ro_binds", "env", "profile", "count",
              "restart", "backoff",
              "max_backoff", "crash_loop_limit", "crash_loop_window", "call_timeout", "memory"}


def _size(where: str, v: object) -> int:
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    if isinstance(v, str) and v[:-1].isdigit() and v[-1].lower() in _SIZES:
        return int(v[:-1]) * _SIZES[v[-1].lower()]
    raise ConfigError(f"{where}: expected a size like 256M or a byte count, got {v!r}")


def _num(where: str, v: object, *, integer: bool = False, minimum: float = 0) -> Any:
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if not ok or isinstance(v, bool) or v < minimum:  # type: ignore[operator]
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: expected {kind} >= {minimum:g}, got {v!r}")
    return v


def load_config(path: str) -> ServeConfig:
    """Parse and check CONFIG.toml; every error names the file and the key."""
    try:
        # The host-path rule: no link followed, no waiting on a FIFO, a regular file only.
        fd = hostpath.open_input(os.path.abspath(path), "config file")
        with os.fdopen(fd, "rb") as f:
            data = tomllib.load(f)
    except hostpath.HostPathError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    top = set(data) - {"supervisor", "pools"}
    if top:
        raise ConfigError(f"{path}: unknown section {sorted(top)[0]!r} "
                          "(expected [supervisor] and [pools.NAME])")
    sup = data.get("supervisor", {})
    unknown = set(sup) - {"start_method", "preload", "status_socket"}
    if unknown:
        raise ConfigError(f"{path}: supervisor.{sorted(unknown)[0]}: unknown key")
    method = sup.get("start_method", "zygote")
    if method not in START_METHODS:
        raise ConfigError(f"{path}: supervisor.start_method: expected one of "
                          f"{', '.join(START_METHODS)}, got {method!r}")
    preload = sup.get("preload", [])
    if not isinstance(preload, list) or not all(isinstance(p, str) for p in preload):
        raise ConfigError(f"{path}: supervisor.preload: expected a list of module names")
    default_sock = str(Path(os.path.abspath(path)).with_suffix(".sock"))
    status_socket = sup.get("status_socket", default_sock)
    if not isinstance(status_socket, str) or not status_socket:
        raise ConfigError(f"{path}: supervisor.status_socket: expected a path")
    status_socket = os.path.abspath(status_socket)
    pools_raw = data.get("pools", {})
    if not pools_raw:
        raise ConfigError(f"{path}: no [pools.NAME] section: nothing to serve")
    pools = []
    for name, p in pools_raw.items():
        where = f"{path}: pools.{name}"
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: expected a table")
        unknown = set(p) - _POOL_KEYS
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
        module, program = p.get("module"), p.get("program")
        if (module is None) == (program is None):
            raise ConfigError(f"{where}: give exactly one of module = \"pkg.mod:Impl\" or "
                              "program = [argv...]")
        if module is not None and (not isinstance(module, str) or ":" not in module):
            raise ConfigError(f"{where}.module: expected \"package.module:Implementation\", "
                              f"got {module!r}")
        if program is not None and (not isinstance(program, list) or not program
                                    or not all(isinstance(a, str) for a in program)):
            raise ConfigError(f"{where}.program: expected a non-empty list of strings")
        iface = p.get("interface")
        if not isinstance(iface, str) or ":" not in iface:
            raise ConfigError(f"{where}.interface: expected \"package.module:Interface\", "
                              f"got {iface!r}")
        mode = p.get("restart", "on-failure")
        if mode not in RESTART_MODES:
            raise ConfigError(f"{where}.restart: expected one of {', '.join(RESTART_MODES)}, "
                              f"got {mode!r}")
        backoff = float(_num(f"{where}.backoff", p.get("backoff", 0.1)))
        max_backoff = float(_num(f"{where}.max_backoff", p.get("max_backoff", 5.0),
                                 minimum=backoff))
        restart = RestartPolicy(
            mode, backoff=backoff, max_backoff=max_backoff,
            crash_loop_limit=_num(f"{where}.crash_loop_limit", p.get("crash_loop_limit", 10),
                                  integer=True, minimum=1),
            crash_loop_window=float(_num(f"{where}.crash_loop_window",
                                         p.get("crash_loop_window", 30.0), minimum=0.001)))
        extra: dict[str, tuple[str, ...]] = {}
        for key in ("ro_binds", "env"):
            v = p.get(key, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"{where}.{key}: expected a list of strings")
            if v and program is None:
                raise ConfigError(f"{where}.{key}: only for program pools (module workers "
                                  "get their code bound in by the supervisor)")
            extra[key] = tuple(v)
        bad_env = [e for e in extra["env"] if "=" not in e]
        if bad_env:
            raise ConfigError(f"{where}.env: {bad_env[0]!r} is not NAME=VALUE")
        timeout = p.get("call_timeout")
        pools.append(PoolConfig(
            name=name, interface=iface, module=module,
            program=tuple(program) if program is not None else None,
            profile=str(p.get("profile", "strict" if module else "default")),
            count=_num(f"{where}.count", p.get("count", 1), integer=True, minimum=1),
            restart=restart,
            call_timeout=None if timeout is None else float(_num(f"{where}.call_timeout",
                                                                 timeout, minimum=0.001)),
            memory=None if p.get("memory") is None else _size(f"{where}.memory", p["memory"]),
            ro_binds=extra["ro_binds"], env=extra["env"]))
    return ServeConfig(path=path, start_method=method, preload=tuple(preload),
                       status_socket=status_socket, pools=tuple(pools))


async def serve(cfg: ServeConfig, *, ready: asyncio.Event | None = None) -> int:
    """Run the pools until SIGTERM/SIGINT; returns the exit code."""
    stop = asyncio.Event()
    preload = list(cfg.preload) + [p.module.partition(":")[0] for p in cfg.pools if p.module]
    # First, so a socket path that is refused fails before any worker starts.
    place = StatusSocket.place(cfg.status_socket)
    sup = Supervisor(start_method=cfg.start_method, zygote=cfg.start_method == "zygote",
                     zygote_preload=preload)
    try:
        return await _serve(cfg, sup, place, stop, ready)
    finally:
        place.remove()


async def _serve(cfg: ServeConfig, sup: Supervisor, place: StatusSocket,
                 stop: asyncio.Event, ready: asyncio.Event | None) -> int:
    loop = asyncio.get_running_loop()
    async with sup:
        for pc in cfg.pools:
            try:
                iface = resolve(pc.interface)
            except (ImportError, AttributeError, ValueError) as e:
                raise ConfigError(f"{cfg.path}: pools.{pc.name}.interface: {e}") from None
            kw: dict[str, Any] = {"profile": pc.profile}
            if pc.memory is not None:
                kw["memory"] = pc.memory
            if pc.program:
                kw["ro_binds"] = list(pc.ro_binds)
                kw["env"] = list(pc.env)
            await sup.pool(iface, pc.module if pc.module else list(pc.program or ()),
                           size=pc.count, name=pc.name, restart=pc.restart,
                           call_timeout=pc.call_timeout, **kw)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning(
            "status: %s", json.dumps(sup.status(), sort_keys=True)))
        server = await _status_server(place, sup)
        log.info("serving %d pool(s); status socket %s", len(cfg.pools), cfg.status_socket)
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            server.close()
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

    def __init__(self, path: str, dir_fd: int, name: str) -> None:
        self.path, self.dir_fd, self.name = path, dir_fd, name
        self.sock: socket.socket | None = None
        self.ident = (0, 0)

    @classmethod
    def place(cls, path: str) -> StatusSocket:
        """Check where the socket goes (before any worker starts); `bind` makes it.

        Raises ConfigError, one sentence naming the path, when the place is refused."""
        parent, name = os.path.split(os.path.abspath(path))
        try:
            dir_fd, st = hostpath.open_path(parent or "/", cls.WHAT)
        except hostpath.HostPathError as e:
            raise ConfigError(str(e)) from None
        problem = _unsafe_dir(st)
        if problem:
            os.close(dir_fd)
            raise ConfigError(f"{cls.WHAT}: {path} was refused: its directory {parent} "
                              f"{problem}; put the socket in a directory only you can write")
        out = cls(path, dir_fd, name)
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

    def bind(self) -> socket.socket:
        """Make the socket (mode 0600), replacing a previous server's."""
        if self._stale():
            # Its name is ours, in a directory where nobody else may rename or
            # remove entries, so this removes that very socket.
            os.unlink(self.name, dir_fd=self.dir_fd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
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


async def _status_server(place: StatusSocket, sup: Supervisor) -> asyncio.AbstractServer:
    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(json.dumps(sup.status(), sort_keys=True).encode() + b"\n")
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

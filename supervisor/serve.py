"""`warden serve CONFIG.toml`: named worker pools from a file, in the foreground.

    [supervisor]
    start_method = "zygote"                 # spawn | zygote | fork
    code_paths = [".."]                     # where the workers' modules are, from this
                                            # file's directory: bound read-only into them
    preload = ["thumbnailer.worker"]        # modules the zygote imports up front
    status_socket = "/run/warden/thumbs.sock"   # for `warden status` (default: beside CONFIG)

    [pools.thumbs]
    interface = "thumbnailer.api:Thumbnailer"
    module = "thumbnailer.worker:ThumbnailerImpl"  # or: program = ["/usr/bin/x", ...]
    profile = "strict"                      # default: strict (module), default (program)
    count = 2
    restart = "on-failure"                  # never | on-failure | always
    backoff = 0.1                           # seconds, doubled per consecutive failure
    max_backoff = 5
    crash_loop_limit = 10                   # restarts within crash_loop_window seconds
    crash_loop_window = 30
    call_timeout = 5                        # seconds per call (pool.call)
    memory = "256M"                         # spawn/program workers: cgroup; others: RLIMIT_AS
    # A program pool takes every sandbox option `warden run` does, named like
    # build_spec's keywords (warden.supervisor.sandbox.options): ro_binds = ["/opt/x"],
    # binds, tmpfs, files, env = ["MODE=fast"], keep_env, chdir, timeout, cpu_time,
    # max_procs, max_open_files, tmp_size, share_net, outer_uid, ...

The file is decoded with msgspec into typed structs, strictly (a string where a
number belongs is an error, not converted); an unknown key is refused, and
every error names the file, line and column of the key or value, with the line
and a caret, as profile errors do.

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
import re
import signal
import socket
import stat
import struct
import sys
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from warden.errors import InvalidInput
from warden.supervisor.core import START_METHODS, Supervisor
from warden.supervisor.pool import RESTART_MODES, RestartPolicy
from warden.supervisor.sandbox import hostpath
from warden.supervisor.sandbox.options import SandboxOptions, described
from warden.supervisor.sandbox.spec import SpecError, parse_size
from warden.supervisor.service import (
    BUILTIN,
    Role,
    RoleSection,
    Service,
    ServiceConfig,
    ServiceSection,
    group_id,
    user_id,
)
from warden.supervisor.worker_main import resolve

log = logging.getLogger("warden.serve")


class ConfigError(InvalidInput, ValueError):
    """A serve config is invalid; the message names the file and the key.

    Where the key or value is written is known, it prints like a profile error,
    file:line:col, the line and a caret under the spot; `file`, `line`, `column`
    (1-based, 0 when unknown) and `source_line` say the same.
    """

    def __init__(self, message: str, *, file: str = "", line: int = 0, column: int = 0,
                 source_line: str = "") -> None:
        self.message, self.file, self.line, self.column = message, file, line, column
        self.source_line = source_line
        super().__init__(str(self))

    def __str__(self) -> str:
        if not (self.file and self.line):
            return self.message
        text = f"{self.file}:{self.line}:{self.column}: error: {self.message}"
        if self.source_line:
            lead = self.source_line[: self.column - 1]
            text += ("\n    " + self.source_line.rstrip("\n") + "\n    "
                     + "".join("\t" if c == "\t" else " " for c in lead) + "^")
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_config_error, (self.message, self.file, self.line, self.column,
                                self.source_line))


def _config_error(message: str, file: str, line: int, column: int,
                  source_line: str) -> ConfigError:
    return ConfigError(message, file=file, line=line, column=column, source_line=source_line)


@dataclass(frozen=True)
class PoolConfig:
    name: str
    interface: str
    module: str | None
    program: tuple[str, ...] | None
    count: int
    restart: RestartPolicy
    call_timeout: float | None
    options: SandboxOptions  # the profile, and for a program pool its sandbox options

    @property
    def profile(self) -> str:
        return self.options.profile

    @property
    def memory(self) -> int | None:
        return self.options.memory


@dataclass(frozen=True)
class ServeConfig:
    path: str
    start_method: str
    preload: tuple[str, ...]
    status_socket: str
    pools: tuple[PoolConfig, ...] = field(default_factory=tuple)
    # Directories the workers' modules are imported from (absolute): on sys.path
    # here, bound read-only into the workers.
    code_paths: tuple[str, ...] = ()
    # The named-socket service ([service] and [roles.NAME]; supervisor/service.py), if any.
    service: ServiceConfig | None = None


# ---- the config file's structs (decoded with msgspec, strict, unknown keys refused) ----
if TYPE_CHECKING:
    StartMethod = str
    RestartMode = str
else:
    StartMethod = Literal[START_METHODS]
    RestartMode = Literal[RESTART_MODES]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class SupervisorSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    start_method: StartMethod = "zygote"
    preload: tuple[str, ...] = ()  # modules the zygote imports up front
    status_socket: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    code_paths: tuple[str, ...] = ()  # relative to the config file's directory


class PoolKeys(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A pool's own keys; the sandbox options' keys are added from SandboxOptions."""

    interface: str
    module: str | None = None
    program: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)] | None = None
    count: Annotated[int, msgspec.Meta(ge=1)] = 1
    restart: RestartMode = "on-failure"
    backoff: Annotated[float, msgspec.Meta(ge=0)] = 0.1
    max_backoff: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    crash_loop_limit: Annotated[int, msgspec.Meta(ge=1)] = 10
    crash_loop_window: Positive = 30.0
    call_timeout: Positive | None = None


# Each kind of sandbox option as a config value (the bounds of warden run's click types).
_KINDS: dict[str, Any] = {
    "text": str, "texts": tuple[str, ...], "flag": bool, "id": int,
    "size": int | str,  # parse_size, like --memory
    "count": Annotated[int, msgspec.Meta(ge=1)], "seconds": Positive,
}
# The options a pool may set: all that `warden serve` can give (options.Option.serve).
_OPTIONS = tuple(name for name, o in described() if o.serve)
# The ones a module pool may set too: its workers are started by the supervisor,
# which binds their code and sets their environment itself.
_MODULE_OPTIONS = ("profile", "memory")
PoolSection: Any = msgspec.defstruct(
    "PoolSection",
    [(name, _KINDS[o.kind] | msgspec.UnsetType, msgspec.UNSET)
     for name, o in described() if o.serve],
    bases=(PoolKeys,), forbid_unknown_fields=True, kw_only=True)


class _Reader:
    """Decodes one config text into the structs; every error carries its position."""

    def __init__(self, path: str, text: str) -> None:
        from warden.profiles.locator import Locator

        self.path, self.data = path, tomllib.loads(text)
        self.where = Locator(text)

    def error(self, at: tuple[Any, ...], message: str, *, key: bool = False,
              named: bool = False) -> ConfigError:
        """An error at key path `at` (its value, or with key=True the key itself);
        the message is prefixed with the dotted key unless it is `named` already."""
        line, column = (self.where.key if key else self.where.value)(at)
        if at and not named:
            message = f"{dotted(at)}: {message}"
        return ConfigError(message, file=self.path, line=line, column=column,
                           source_line=self.where.source_line(line))

    def convert(self, raw: Any, into: Any, at: tuple[Any, ...]) -> Any:
        try:
            return msgspec.convert(raw, into)
        except msgspec.ValidationError as e:
            raise self._explain(str(e), raw, into, at) from None

    def _explain(self, text: str, raw: Any, into: Any, at: tuple[Any, ...]) -> ConfigError:
        """msgspec's message ("... - at `$.count`") as the config's own words."""
        message, _, where = text.partition(" - at `$")
        sub = _path(where)
        unknown = re.match(r"Object contains unknown field `(.*)`", message)
        if unknown:
            return self.error((*at, *sub, unknown.group(1)), "unknown key", key=True)
        missing = re.match(r"Object missing required field `(.*)`", message)
        if missing:
            return self.error((*at, *sub), f"{missing.group(1)} is required")
        value, kind = raw, into
        for p in sub:
            value = value[p]
            kind = _member(kind, p)
        return self.error((*at, *sub), f"expected {_describe(kind)}, got {value!r}")


def dotted(at: tuple[Any, ...]) -> str:
    """("pools", "calc", "env", 0) -> "pools.calc.env[0]"."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in at).lstrip(".")


def _path(where: str) -> list[str | int]:
    """`.pools.count`, `.preload[2]` -> ["pools", "count"], ["preload", 2]."""
    return [int(i) if i else k for k, i in re.findall(r"\.([^.\[`]+)|\[(\d+)\]", where)]


def _member(t: Any, part: str | int) -> Any:
    """The type of `part` of a value of type t (a struct's field, a list's item)."""
    for m in _alternatives(t):
        m = _base(m)[0]
        if isinstance(part, int) and typing.get_origin(m) in (tuple, list):
            return typing.get_args(m)[0]
        if isinstance(part, str) and isinstance(m, type) and issubclass(m, msgspec.Struct):
            return next((f.type for f in msgspec.structs.fields(m) if f.encode_name == part), m)
    return t


def _alternatives(t: Any) -> tuple[Any, ...]:
    """The members of a union (None and UNSET left out), or just t."""
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return tuple(m for m in typing.get_args(t) if m not in (type(None), msgspec.UnsetType))
    return (t,)


def _base(t: Any) -> tuple[Any, list[msgspec.Meta]]:
    """Annotated[T, Meta(...)] -> (T, [Meta(...)])."""
    if typing.get_origin(t) is Annotated:
        return t.__origin__, [m for m in t.__metadata__ if isinstance(m, msgspec.Meta)]
    return t, []


def _describe(t: Any) -> str:
    """What a value of type t looks like, in a sentence's words."""
    members = _alternatives(t)
    if len(members) > 1:
        return " or ".join(_describe(m) for m in members)
    t, metas = _base(members[0])
    bound = [f"{op} {getattr(m, name):g}" for m in metas
             for op, name in ((">=", "ge"), (">", "gt"), ("<=", "le"), ("<", "lt"))
             if getattr(m, name) is not None]
    if typing.get_origin(t) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(t)))
    if t in (int, float):
        return " ".join(["an integer" if t is int else "a number", *bound[:1]])
    if t is str:
        return "a non-empty string" if any(m.min_length for m in metas) else "a string"
    if t is bool:
        return "true or false"
    if typing.get_origin(t) in (tuple, list):
        item = _describe(typing.get_args(t)[0])
        items = {"a string": "strings", "an integer": "integers"}.get(item, f"items ({item})")
        return ("a non-empty list" if any(m.min_length for m in metas) else "a list") + \
            f" of {items}"
    return "a table"


def load_config(path: str) -> ServeConfig:
    """Parse and check CONFIG.toml; every error names the file, the key and where it is."""
    try:
        # The host-path rule: no link followed, no waiting on a FIFO, a regular file only.
        fd = hostpath.open_input(os.path.abspath(path), "config file")
        with os.fdopen(fd, "rb") as f:
            text = f.read().decode()
    except hostpath.HostPathError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e}") from None
    try:
        r = _Reader(path, text)
    except tomllib.TOMLDecodeError as e:
        at = re.search(r" \(at line (\d+), column (\d+)\)$", str(e))
        if at is None:
            raise ConfigError(f"{path}: {e}") from None
        line, column = int(at.group(1)), int(at.group(2))
        lines = text.splitlines()
        raise ConfigError(str(e)[: at.start()], file=path, line=line, column=column,
                          source_line=lines[line - 1] if line <= len(lines) else "") from None
    top = sorted(set(r.data) - {"supervisor", "pools", "service", "roles"})
    if top:
        raise r.error((top[0],), "unknown section (expected [supervisor], [pools.NAME], "
                      "[service] and [roles.NAME])", key=True)
    sup: SupervisorSection = r.convert(r.data.get("supervisor", {}), SupervisorSection,
                                       ("supervisor",))
    here = os.path.dirname(os.path.abspath(path))
    code_paths = []
    for i, p in enumerate(sup.code_paths):
        full = os.path.realpath(os.path.join(here, p))
        if not os.path.isdir(full):
            raise r.error(("supervisor", "code_paths", i), f"{full} is not a directory")
        code_paths.append(full)
    default_sock = str(Path(os.path.abspath(path)).with_suffix(".sock"))
    status_socket = os.path.abspath(sup.status_socket or default_sock)
    pools_raw = r.data.get("pools", {})
    if not isinstance(pools_raw, dict) or not pools_raw:
        raise r.error(("pools",) if "pools" in r.data else (),
                      "no [pools.NAME] section: nothing to serve", named=True)
    pools = tuple(_pool(r, name, raw) for name, raw in pools_raw.items())
    return ServeConfig(path=path, start_method=sup.start_method, preload=sup.preload,
                       status_socket=status_socket, code_paths=tuple(code_paths),
                       pools=pools, service=_service(r, here, {p.name for p in pools}))


def _service(r: _Reader, here: str, pools: set[str]) -> ServiceConfig | None:
    """[service] and [roles.NAME]: both, or neither."""
    if "service" not in r.data and "roles" not in r.data:
        return None
    if "service" not in r.data:
        raise r.error(("roles",), "roles without a [service] section (its socket)", key=True)
    raw_roles = r.data.get("roles", {})
    if not isinstance(raw_roles, dict) or not raw_roles:
        raise r.error(("service",), "a [service] needs at least one [roles.NAME]: "
                      "nobody could call it", key=True)
    svc: ServiceSection = r.convert(r.data["service"], ServiceSection, ("service",))
    if (svc.socket is None) == (svc.abstract is None):
        raise r.error(("service",), 'give exactly one of socket = "PATH" or '
                      'abstract = "NAME"', key=True)
    if BUILTIN in pools:
        raise r.error(("pools", BUILTIN), f"the pool name {BUILTIN!r} is reserved for the "
                      "service's own methods", key=True)
    ids: dict[str, int | None] = {}
    for key, look in (("owner", user_id), ("group", group_id)):
        ref = getattr(svc, key)
        if ref is not None and svc.abstract is not None:
            raise r.error(("service", key), "an abstract socket has no owner or mode",
                          key=True)
        try:
            ids[key] = None if ref is None else look(ref)
        except KeyError:
            raise r.error(("service", key), f"no such {'user' if key == 'owner' else 'group'}"
                          f" {ref!r}") from None
    roles = []
    for name, raw in raw_roles.items():
        at = ("roles", name)
        rs: RoleSection = r.convert(raw, RoleSection, at)
        for i, p in enumerate(rs.pools):
            if p not in pools:
                raise r.error((*at, "pools", i), f"no pool named {p!r} (pools: "
                              f"{', '.join(sorted(pools))})")
        if not (rs.uids or rs.gids or rs.groups):
            raise r.error(at, "a role needs uids, gids or groups: it would match nobody",
                          key=True)
        gids = set()
        for i, g in enumerate(rs.groups):
            try:
                gids.add(group_id(g))
            except KeyError:
                raise r.error((*at, "groups", i), f"no such group {g!r}") from None
        roles.append(Role(name=name, uids=frozenset(rs.uids), gids=frozenset(rs.gids),
                          groups=frozenset(gids), pools=rs.pools, admin=rs.admin,
                          permissions=frozenset(rs.permissions)))
    path = None if svc.socket is None else os.path.abspath(os.path.join(here, svc.socket))
    return ServiceConfig(path=path, abstract=svc.abstract, mode=svc.mode,
                         owner=ids["owner"], group=ids["group"], backlog=svc.backlog,
                         max_connections=svc.max_connections,
                         max_connections_per_uid=svc.max_connections_per_uid,
                         max_calls_per_connection=svc.max_calls_per_connection,
                         roles=tuple(roles))


def _pool(r: _Reader, name: str, raw: Any) -> PoolConfig:
    at = ("pools", name)
    p = r.convert(raw, PoolSection, at)
    if (p.module is None) == (p.program is None):
        raise r.error(at, "give exactly one of module = \"pkg.mod:Impl\" or "
                      "program = [argv...]", key=True)
    for key, what in (("interface", "Interface"), ("module", "Implementation")):
        value = getattr(p, key)
        if value is not None and ":" not in value:
            raise r.error((*at, key), f"expected \"package.module:{what}\", got {value!r}")
    if p.max_backoff < p.backoff:
        raise r.error((*at, "max_backoff"), f"expected a number >= {p.backoff:g} (backoff), "
                      f"got {p.max_backoff!r}")
    given = {k: getattr(p, k) for k in _OPTIONS if getattr(p, k) is not msgspec.UNSET}
    if p.module is not None:
        for key in given:
            if key not in _MODULE_OPTIONS:
                raise r.error((*at, key), "only for program pools (module workers get their "
                              "code bound in by the supervisor)", key=True)
    for key, kind in described():
        if key in given and kind.kind == "size" and isinstance(given[key], str):
            try:
                given[key] = parse_size(given[key], dotted((*at, key)))
            except SpecError as e:
                raise r.error((*at, key), str(e), named=True) from None
        if key in given and kind.kind == "size" and given[key] <= 0:
            raise r.error((*at, key), f"expected a size like 256M or a byte count > 0, got "
                          f"{given[key]!r}")
    for i, item in enumerate(given.get("env", ())):
        if "=" not in item:
            raise r.error((*at, "env", i), f"{item!r} is not NAME=VALUE")
    given.setdefault("profile", "strict" if p.module else SandboxOptions.profile)
    return PoolConfig(
        name=name, interface=p.interface, module=p.module, program=p.program,
        count=p.count, call_timeout=p.call_timeout, options=SandboxOptions(**given),
        restart=RestartPolicy(p.restart, backoff=p.backoff, max_backoff=p.max_backoff,
                              crash_loop_limit=p.crash_loop_limit,
                              crash_loop_window=p.crash_loop_window))


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
                {k: v for k, v in pc.options.changed().items() if k in _MODULE_OPTIONS}
            kw.setdefault("profile", pc.profile)
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

"""The `warden serve` config file: decoded and checked before anything starts.

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

    [pools.thumbs.broker]                   # module pools: the explicit broker (docs/broker.md)
    read = ["/srv/images"]                  # PATH[:links][:fifo][:device], as --broker-read
    write = ["/srv/thumbs"]                 # as --broker-write
    connect = ["10.1.2.3:5432"]             # HOST:PORT[-PORT][/tcp|/udp], as --broker-connect
    # A program pool takes every sandbox option `warden run` does, named like
    # build_spec's keywords (warden.supervisor.sandbox.options): ro_binds = ["/opt/x"],
    # binds, tmpfs, files, env = ["MODE=fast"], keep_env, chdir, timeout, cpu_time,
    # max_procs, max_open_files, tmp_size, share_net, outer_uid, ...

The file is decoded with msgspec into typed structs, strictly (a string where a
number belongs is an error, not converted); an unknown key is refused, and
every error names the file, line and column of the key or value, with the line
and a caret, as profile errors do.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from warden.errors import InvalidInput
from warden.supervisor.broker.offer import BrokerRules
from warden.supervisor.core import START_METHODS
from warden.supervisor.pool import RESTART_MODES, RestartPolicy
from warden.supervisor.sandbox import hostpath
from warden.supervisor.sandbox.options import SandboxOptions, described
from warden.supervisor.sandbox.spec import SpecError, parse_size
from warden.supervisor.service import (
    BUILTIN,
    Role,
    RoleSection,
    ServiceConfig,
    ServiceSection,
    group_id,
    user_id,
)


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
    broker: BrokerRules | None = None  # [pools.NAME.broker]: each worker's explicit broker

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


class BrokerSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[pools.NAME.broker]: the texts of warden run's --broker-* options."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()


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
    broker: BrokerSection | None = None


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
MODULE_OPTIONS = ("profile", "memory")
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
                         idle_timeout=svc.idle_timeout,
                         roles=tuple(roles))


def _broker(r: _Reader, at: tuple[Any, ...], p: Any) -> BrokerRules | None:
    """[pools.NAME.broker], each rule through the rules' one parser (BrokerRules.parse);
    an error points at the rule."""
    b: BrokerSection | None = p.broker
    if b is None:
        return None
    if p.module is None:
        raise r.error((*at, "broker"), "only for module pools (a program pool's workers "
                      "do not speak the broker's ipc)", key=True)
    for key in ("read", "write", "connect"):
        for i, text in enumerate(getattr(b, key)):
            try:
                BrokerRules.parse(**{key: [text]})
            except ValueError as e:
                raise r.error((*at, "broker", key, i), str(e)) from None
    return BrokerRules.parse(read=b.read, write=b.write, connect=b.connect)


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
            if key not in MODULE_OPTIONS:
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
        broker=_broker(r, at, p),
        restart=RestartPolicy(p.restart, backoff=p.backoff, max_backoff=p.max_backoff,
                              crash_loop_limit=p.crash_loop_limit,
                              crash_loop_window=p.crash_loop_window))

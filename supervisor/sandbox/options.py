"""The one vocabulary of sandbox options: `warden run`'s flags, a `warden serve`
program pool's keys and build_spec()'s keywords are the fields of SandboxOptions.

Each option is declared once, here: its name (build_spec's keyword, the serve
config's key and click's parameter name), its type, its default and, in its
metadata, the command-line flag, metavar, help and kind. `warden run` makes its
click options from these fields (supervisor/run_cli.py), `warden serve` its
config struct (supervisor/serve.py), and build_spec() reads the object; none
of them spells a name or a default again.

This module imports nothing of warden's and no third-party module: `warden run`
loads it at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

# What kind of value an option takes; the CLI and the serve config map each to
# their own type (click's ParamType, a msgspec annotation), with the same bounds.
Kind = Literal[
    "text",      # a string
    "texts",     # a string, given any number of times (a list in a config)
    "flag",      # on when given
    "no-flag",   # on unless the flag is given (the flag turns it off)
    "size",      # bytes: 512M, 2G, 65536 (parse_size)
    "count",     # an integer >= 1
    "seconds",   # a number > 0
    "fd",        # an integer >= 0
    "fds",       # integers >= 0, any number of times
    "id",        # an integer (a uid or gid)
    "api",       # no flag and no config key: the Python API's only
]


class Option:
    """How one field is spelled outside Python (read-only).

    A plain class, not a dataclass: 33 of them are made whenever `warden run`
    starts, and dataclass() would compile its methods for that (~0.7 ms)."""

    __slots__ = ("flag", "help", "kind", "metavar", "sandbox", "serve", "short")
    _ORDER = ("flag", "help", "kind", "metavar", "short", "serve", "sandbox")  # __init__'s
    flag: str                 # "--ro-bind"; "" for an API-only option
    help: str
    kind: Kind
    metavar: str | None
    short: str | None         # "-p"
    serve: bool               # a key of a serve program pool
    sandbox: bool             # read by build_spec (False: where warden run reports)

    def __init__(self, flag: str, help: str, kind: Kind = "text", metavar: str | None = None,
                 short: str | None = None, serve: bool = True, sandbox: bool = True) -> None:
        for name, value in zip(self._ORDER, (flag, help, kind, metavar, short, serve,
                                                sandbox), strict=True):
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._ORDER)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Option.{name} is read-only")

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={v!r}" for n, v in zip(self._ORDER, self._values(),
                                                       strict=True))
        return f"Option({inner})"

    def __eq__(self, other: object) -> bool:
        return self._values() == other._values() if isinstance(other, Option) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())


def _opt(default: Any, flag: str, help: str, kind: Kind = "text", *, metavar: str | None = None,
         short: str | None = None, serve: bool = True, sandbox: bool = True) -> Any:
    return field(default=default, metadata={"option": Option(flag, help, kind, metavar, short,
                                                             serve, sandbox)})


_TUPLES = ("ro_binds", "binds", "owned_ro_binds", "owned_binds", "tmpfs", "ro_bind_data",
           "symlinks", "dirs", "pass_fds", "files", "env", "keep_env")
_BROKER_TUPLES = ("broker_read", "broker_write", "broker_connect")


@dataclass(frozen=True)
class SandboxOptions:
    """Everything a user sets about one sandbox, before it is merged with a profile.

    build_spec(argv, profile, options) merges it (option, then profile, then the
    built-in default) and validates it; errors name the option by its flag.
    """

    profile: str = _opt("default", "--profile", "Profile to run under (built-in name, name "
                        "on the search path, or file).", short="-p", metavar="NAME|PATH",
                        sandbox=False)
    ro_binds: tuple[str, ...] = _opt((), "--ro-bind", "Bind SRC read-only.", "texts",
                                     metavar="SRC[:DST]")
    binds: tuple[str, ...] = _opt((), "--bind", "Bind SRC read-write.", "texts",
                                  metavar="SRC[:DST]")
    owned_ro_binds: tuple[str, ...] = _opt(
        (), "--ro-bind-owned", "Bind SRC read-only with SRC's owner as the sandbox's own "
        "uid (an idmapped mount: its owner-only files become readable; git trusts a "
        "repository there).", "texts", metavar="SRC[:DST]")
    owned_binds: tuple[str, ...] = _opt(
        (), "--bind-owned", "Bind SRC read-write with SRC's owner as the sandbox's own uid "
        "(an idmapped mount: what the sandbox creates there belongs to SRC's owner; such a "
        "sandbox may not set set-id bits, make devices or hard links).", "texts",
        metavar="SRC[:DST]")
    tmpfs: tuple[str, ...] = _opt((), "--tmpfs", "Mount an empty tmpfs at DST (anywhere "
                                  "but /proc and /dev; /dev/shm replaces the built-in one).",
                                  "texts", metavar="DST")
    ro_bind_data: tuple[str, ...] = _opt((), "--ro-bind-data", "Read this process's fd FD to "
                                         "its end (16M at most) and place the data as a "
                                         "read-only file at DEST.", "texts", metavar="FD:DEST",
                                         serve=False)
    symlinks: tuple[str, ...] = _opt((), "--symlink", "Make a symbolic link at DEST pointing "
                                     "to TARGET (a path inside the sandbox).", "texts",
                                     metavar="TARGET:DEST")
    dirs: tuple[str, ...] = _opt((), "--dir", "Make an empty directory at DEST.", "texts",
                                 metavar="DEST")
    chdir: str | None = _opt(None, "--chdir", "Working directory inside the sandbox.",
                             metavar="DIR")
    memory: int | None = _opt(None, "--memory", "Memory limit (e.g. 512M).", "size")
    max_procs: int | None = _opt(None, "--max-procs", "Process/thread limit.", "count")
    max_open_files: int | None = _opt(None, "--max-open-files", "Open-file limit.", "count")
    cpu_time: float | None = _opt(None, "--cpu-time", "CPU-time limit.", "seconds",
                                  metavar="SECONDS")
    timeout: float | None = _opt(None, "--timeout", "Wall-clock limit; the sandbox is killed "
                                 "when it expires.", "seconds", metavar="SECONDS")
    tmp_size: int | None = _opt(None, "--tmp-size", "Size of the private /tmp.", "size")
    share_net: bool = _opt(False, "--share-net", "Share the host's network (no new net "
                           "namespace).", "flag")
    channel: bool = _opt(True, "--no-channel", "Do not open the channel at fd 3.", "no-flag",
                         serve=False)
    pass_fds: tuple[int, ...] = _opt((), "--pass-fd", "Hand over this process's fd N at the "
                                     "same number.", "fds", metavar="N", serve=False)
    files: tuple[str, ...] = _opt((), "--file", "Open PATH here (with warden's rights) and "
                                  "hand the fd over; a link, FIFO or device is refused unless "
                                  ":follow, :fifo, :device is added.", "texts",
                                  metavar="PATH[:r|w|rw|a][:fifo|:device|:follow]")
    env: tuple[str, ...] = _opt((), "--env", "Set a variable in the child.", "texts",
                                metavar="K=V")
    keep_env: tuple[str, ...] = _opt((), "--keep-env", "Copy a variable from this "
                                     "environment.", "texts", metavar="K")
    # The transparent broker (docs/broker.md): the program's own open() and connect()
    # of what these name are answered by warden, with warden's rights. Read where
    # warden run starts the sandbox (the policy lives in the supervisor), not by
    # build_spec.
    broker_read: tuple[str, ...] = _opt(
        (), "--broker-read", "Let the program open files at or beneath host PATH for "
        "reading, opened by warden (outside every bind too); a link, FIFO or device "
        "only with :links, :fifo, :device.", "texts", metavar="PATH[:links][:fifo][:device]",
        serve=False, sandbox=False)
    broker_write: tuple[str, ...] = _opt(
        (), "--broker-write", "As --broker-read, and for writing, creating and truncating.",
        "texts", metavar="PATH[:links][:fifo][:device]", serve=False, sandbox=False)
    broker_connect: tuple[str, ...] = _opt(
        (), "--broker-connect", "Let the program connect to this address, connected by "
        "warden in its own network (a name is resolved once, now; IPv6 in brackets); "
        "every other IP connect is refused.", "texts",
        metavar="HOST:PORT[-PORT][/tcp|/udp]", serve=False, sandbox=False)
    complain: bool = _opt(False, "--complain", "Answer every call the profile would kill "
                          "for with EPERM instead, let the program go on, and list every such "
                          "call in the status: the loop for writing a profile.", "flag")
    json_status: str | None = _opt(
        None, "--json-status", "Write the status record as JSON to FILE (opened before the "
        "program starts; refused inside a writable bind), or to stdout with -, which then "
        "carries the record alone (the program's stdout goes to stderr).", metavar="FILE|-",
        serve=False, sandbox=False)
    json_status_fd: int | None = _opt(None, "--json-status-fd", "Write the status record to "
                                      "this process's fd N (not handed to the program).", "fd",
                                      metavar="N", serve=False, sandbox=False)
    outer_uid: int | None = _opt(None, "--outer-uid", "A fixed outer uid, shared by every "
                                 "sandbox given it (default: one each).", "id")
    outer_gid: int | None = _opt(None, "--outer-gid", "A fixed outer gid (default: the "
                                 "--outer-uid).", "id")
    outer_id_range: str | tuple[int, int] | None = _opt(
        None, "--outer-uid-range", "As root: the ids each sandbox gets one of its own from "
        "(default 2000000000:65536).", metavar="START:COUNT")
    memory_rlimit_only: bool = _opt(False, "--memory-rlimit-only", "Accept a --memory limit "
                                    "held only by rlimits when no cgroup is usable.", "flag")
    # /proc/sys/user limits of the sandbox's user namespace raised above the
    # defaults (userns.DEFAULT_LIMITS), e.g. {"max_user_namespaces": 4096}.
    userns_limits: Mapping[str, int] | None = _opt(None, "", "", "api", serve=False)

    def __post_init__(self) -> None:
        # Frozen all the way down: lists the API was given become tuples.
        for name in _TUPLES + _BROKER_TUPLES:
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"{name}: expected a list of strings, got a string")
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    def changed(self) -> dict[str, Any]:
        """{name: value} of every option not at its default."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != f.default}


def described() -> tuple[tuple[str, Option], ...]:
    """(name, how it is spelled) of every option, in declaration order."""
    return tuple((f.name, f.metadata["option"]) for f in fields(SandboxOptions))


def flag(name: str) -> str:
    """The command-line flag of option `name` (how errors name it)."""
    return _FLAGS[name]


_FLAGS = {name: o.flag or name for name, o in described()}


# ---- the lean command-line parser ---------------------------------------------------
#
# `warden run` parses its flags with click, generated from the fields above. Importing
# click (and what it pulls in: typing's friends, inspect, datetime, uuid, gettext) is
# most of what `warden run` pays before its sandbox starts, so plain arguments go
# through this small parser instead, made from the same declarations. It accepts only
# what it reads exactly as click does: known flags spelled in full (--flag VALUE,
# --flag=VALUE, -p VALUE; like click, the word after a flag that takes a value is
# its value, whatever it looks like), then "--" and the program. Anything else
# (help, an unknown or misspelled flag, a bad value, no "--") returns None and
# click parses it, so every message stays click's.

# A converter raises ValueError (or returns `_REFUSE`) when click would refuse the value.
_REFUSE = object()


def _int_at_least(low: int) -> Any:
    def convert(text: str, flag: str) -> Any:
        n = int(text)  # what click's INT and IntRange call
        return _REFUSE if n < low else n
    return convert


def _seconds(text: str, flag: str) -> Any:
    # click's FloatRange(min=0, min_open=True): float(), then refuses v <= 0 (so NaN passes).
    v = float(text)
    return _REFUSE if v <= 0 else v


# Kind -> converter; "size" is given by the caller (it needs the sandbox's size syntax).
LEAN_CONVERT: dict[str, Any] = {
    "text": lambda text, flag: text,
    "texts": lambda text, flag: text,
    "count": _int_at_least(1),
    "fd": _int_at_least(0),
    "fds": _int_at_least(0),
    "id": lambda text, flag: int(text),
    "seconds": _seconds,
}


class LeanParser:
    """Reads `OPTIONS -- PROGRAM ARGS...` as click reads it, or gives up (None).

    `extra_flags` are the command's own boolean flags besides the options
    (warden run's -q/--quiet): {spelling: parameter name}."""

    def __init__(self, extra_flags: Mapping[str, str], convert: Mapping[str, Any]) -> None:
        self.spellings: dict[str, tuple[str, Option | None]] = {}
        for name, o in described():
            if o.kind == "api":
                continue
            for spelling in (o.short, o.flag):
                if spelling:
                    self.spellings[spelling] = (name, o)
        for spelling, name in extra_flags.items():
            self.spellings[spelling] = (name, None)
        self.convert = {**LEAN_CONVERT, **convert}

    def parse(self, args: list[str]) -> tuple[dict[str, Any], list[str]] | None:
        """({parameter name: value} of what was given, program argv), or None."""
        values: dict[str, Any] = {}
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                program = args[i:]
                return (values, program) if program else None
            spelling, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            known = self.spellings.get(spelling)
            if known is None:
                return None
            name, o = known
            if o is None or o.kind in ("flag", "no-flag"):
                if eq:
                    return None  # click: "does not take a value"
                values[name] = o is None or o.kind == "flag"
                continue
            if not eq:
                if i == len(args):
                    return None
                inline = args[i]
                i += 1
            try:
                value = self.convert[o.kind](inline, o.flag)
            except (ValueError, OverflowError):
                return None
            if value is _REFUSE:
                return None
            if o.kind in ("texts", "fds"):
                values[name] = (*values.get(name, ()), value)
            else:
                values[name] = value
        return None  # no "--": click decides what the program is

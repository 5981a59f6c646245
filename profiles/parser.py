"""One profile file's text -> a Layer: checked values, each with its source position.

A Layer is one file on its own; `warden.profiles.loader` stacks layers (extends,
includes) and flattens them into a `Profile`. Every mistake raises
`ProfileError` pointing at the key or array element at fault.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NoReturn

from warden.profiles import brokerrules, constants, syscalls
from warden.profiles.errors import ProfileError
from warden.profiles.locator import Locator, Path
from warden.profiles.model import (
    MAX_DATA_FILE_BYTES,
    Action,
    ActionKind,
    ArgCondition,
    ArgOp,
    Bind,
    Broker,
    BrokerAddress,
    BrokerPath,
    DataFile,
    Origin,
    Profile,
    Symlink,
    Tmpfs,
    reserved_dest,
)

TOP_KEYS = ("description", "extends", "include", "seccomp", "namespaces", "filesystem",
            "limits", "environment", "broker")
SECCOMP_KEYS = ("default-action", "bad-arch-action", "allow", "deny", "deny-action", "reset",
                "rules")
RULE_KEYS = ("syscall", "action", "args", "why")
NAMESPACE_KEYS = ("user", "pid", "mount", "net", "ipc", "uts", "cgroup")
FILESYSTEM_KEYS = ("ro", "rw", "ro-owned", "rw-owned", "tmpfs", "symlinks", "dirs", "data-files",
                   "tmp-size", "chdir")
BIND_KEYS = ("source", "dest", "optional")
TMPFS_KEYS = ("dest", "size")
SYMLINK_KEYS = ("dest", "target")
DIR_KEYS = ("dest",)
DATA_FILE_KEYS = ("dest", "contents")
BROKER_KEYS = ("read", "write", "connect")
LIMIT_KEYS = ("memory", "processes", "open-files", "cpu-time", "wall-time")
ENVIRONMENT_KEYS = ("keep", "set")

ACTION_EXPECTED = ('"allow", "kill-process", "kill-thread", "errno NAME", "trap", "log" '
                   'or "user-notify"')
# Within one file the most explicit entry for a call wins: a [[seccomp.rules]]
# entry, then a name written out, then a group member; at equal explicitness
# a denial beats an allowance.
ERRNO_EXPECTED = "an errno name such as EPERM, EACCES or ENOSYS, or a number 0..4095"
RANK_ALLOW, RANK_DENY, RANK_EXPLICIT, RANK_RULE = 0, 1, 2, 8


@dataclass(frozen=True)
class Entry:
    """One (syscall, action, conditions) a layer asks for, before layers are merged."""

    syscall: str
    action: Action
    conditions: tuple[ArgCondition, ...]
    origin: Origin
    rank: int  # see RANK_*: the higher wins within one file


@dataclass(frozen=True)
class Reference:
    """An `extends` or `include` target and where it was written."""

    target: str
    file: str
    line: int
    column: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass
class Layer:
    """One profile file as parsed: its own settings, before extends and includes."""

    file: str
    description: str | None = None
    extends: Reference | None = None
    includes: list[Reference] = field(default_factory=list)
    default_action: Action | None = None
    bad_arch_action: Action | None = None
    reset: list[str] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    namespaces: dict[str, bool] = field(default_factory=dict)
    binds: list[Bind] = field(default_factory=list)
    tmpfs: list[Tmpfs] = field(default_factory=list)
    tmp_size: int | None = None
    chdir: str | None = None
    limits: dict[str, int | float] = field(default_factory=dict)
    env_keep: list[str] = field(default_factory=list)
    env_set: dict[str, str] = field(default_factory=dict)
    # filesystem.symlinks, dirs and data-files by (clean) dest, and the [broker] rules.
    placed: dict[str, PlacedEntry] = field(default_factory=dict)
    broker_paths: list[BrokerPath] = field(default_factory=list)
    broker_connect: list[BrokerAddress] = field(default_factory=list)


@dataclass(frozen=True)
class PlacedEntry:
    """A link, directory (a str: its dest) or data file, and where it was written."""

    item: Symlink | str | DataFile
    origin: Origin
    source_line: str

    @property
    def kind(self) -> str:
        return ("symlink" if isinstance(self.item, Symlink) else
                "data file" if isinstance(self.item, DataFile) else "directory")


@dataclass
class Placed:
    """filesystem.symlinks, dirs, data-files and the [broker] rules of a profile being
    flattened (what warden.profiles.loader carries through extends and include).

    A later layer's link, directory or data file replaces an inherited one at the
    same destination, whatever its kind; one at the destination of a bind or a
    tmpfs is an error (`finish`), since the sandbox would refuse it. Broker rules
    add up."""

    entries: dict[str, PlacedEntry] = field(default_factory=dict)
    broker_paths: list[BrokerPath] = field(default_factory=list)
    broker_connect: list[BrokerAddress] = field(default_factory=list)

    def merge(self, other: Placed) -> None:
        """Stack an already flattened parent or include on top."""
        self.entries.update(other.entries)
        self._add(other.broker_paths, other.broker_connect)

    def apply(self, layer: Layer) -> None:
        """The layer's own entries, on top of what it inherited."""
        self.entries.update(layer.placed)
        self._add(layer.broker_paths, layer.broker_connect)

    def _add(self, paths: list[BrokerPath], connect: list[BrokerAddress]) -> None:
        self.broker_paths.extend(p for p in paths if p not in self.broker_paths)
        self.broker_connect.extend(a for a in connect if a not in self.broker_connect)

    def finish(self, profile: Profile) -> Profile:
        """`profile` (binds and tmpfs flattened) with these entries and rules."""
        fs = profile.filesystem
        taken = {clean_dest(b.dest): "bind" for b in fs.binds}
        taken.update({clean_dest(t.dest): "tmpfs" for t in fs.tmpfs})
        for dest, entry in self.entries.items():
            if dest in taken:
                o = entry.origin
                raise ProfileError(
                    f"destination {dest} of this {entry.kind} is also a {taken[dest]}'s, "
                    f"from another layer (extends or include); a later layer replaces only "
                    "a link, directory or data file there: remove one of them",
                    file=o.file, line=o.line, column=o.column, source_line=entry.source_line)
        items = [e.item for e in self.entries.values()]
        fs = replace(fs, symlinks=tuple(i for i in items if isinstance(i, Symlink)),
                     dirs=tuple(i for i in items if isinstance(i, str)),
                     data_files=tuple(i for i in items if isinstance(i, DataFile)))
        return replace(profile, filesystem=fs,
                       broker=Broker(tuple(self.broker_paths), tuple(self.broker_connect)))


def clean_dest(dest: str) -> str:
    """A destination as the sandbox compares them: no empty or "." components."""
    return "/" + "/".join(p for p in dest.split("/") if p and p != ".")


class _Context:
    """The file being parsed: turns a key path into a positioned ProfileError."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.loc = Locator(text)

    def error(self, path: Path, message: str, *, expected: str | None = None,
              at_key: bool = False, column_offset: int = 0) -> NoReturn:
        line, col = self.loc.key(path) if at_key else self.loc.value(path)
        raise ProfileError(message, file=self.file, line=line, column=col + column_offset,
                           source_line=self.loc.source_line(line), expected=expected)

    def origin(self, path: Path, via: tuple[str, ...] = ()) -> Origin:
        line, col = self.loc.value(path)
        return Origin(self.file, line, col, via)

    def reference(self, path: Path, target: str) -> Reference:
        line, col = self.loc.value(path)
        return Reference(target, self.file, line, col)

    # ---- typed accessors ----------------------------------------------------
    def table(self, path: Path, value: object) -> dict[str, object]:
        if not isinstance(value, dict):
            self.error(path, f'"{_dotted(path)}" must be a table', expected="a [table]")
        return value

    def check_keys(self, path: Path, table: dict[str, object], allowed: Sequence[str]) -> None:
        for key in table:
            if key not in allowed:
                import difflib  # only to word an error

                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                where = f' in [{_dotted(path)}]' if path else ""
                self.error((*path, key), f'unknown key "{key}"{where}{hint}',
                           expected="one of " + ", ".join(allowed), at_key=True)

    def string(self, path: Path, value: object) -> str:
        if not isinstance(value, str):
            self.error(path, f'"{_dotted(path)}" must be a string',
                       expected=f"a string, not {_kind(value)}")
        return value

    def strings(self, path: Path, value: object) -> list[str]:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            self.error(path, f'"{_dotted(path)}" must be a list of strings',
                       expected=f"a list of strings, not {_kind(value)}")
        return [self.string((*path, i), v) for i, v in enumerate(value)]

    def boolean(self, path: Path, value: object) -> bool:
        if not isinstance(value, bool):
            self.error(path, f'"{_dotted(path)}" must be true or false',
                       expected=f"true or false, not {_kind(value)}")
        return value

    def count(self, path: Path, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.error(path, f'"{_dotted(path)}" must be a positive integer',
                       expected=f"a positive integer, not {value!r}")
        return value

    def seconds(self, path: Path, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self.error(path, f'"{_dotted(path)}" must be a positive number of seconds',
                       expected=f"a positive number, not {value!r}")
        return float(value)

    def size(self, path: Path, value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        n = size_bytes(value) if isinstance(value, str) else None
        if n:
            return n
        self.error(path, f'"{_dotted(path)}" must be a size',
                   expected=f'a byte count or a string like "64M", not {value!r}')

    def abspath(self, path: Path, value: object) -> str:
        text = self.string(path, value)
        if not text.startswith("/"):
            self.error(path, f'path "{text}" must be absolute', expected='a path starting with "/"')
        if "\0" in text:
            self.error(path, "path contains a NUL byte")
        return text


def size_bytes(text: str) -> int | None:
    """'64M', '2G', '1KiB', '65536' -> bytes; None if `text` is not a size. The one
    size syntax of warden: profiles, `warden run`'s options and serve configs."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
                              "T": 1 << 40}[m.group(2).upper()]


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def parse_action(text: str) -> Action:
    """`"errno EPERM"` -> Action(ERRNO, 1); raises ValueError with the reason."""
    words = text.split()
    if len(words) == 1 and words[0] != "errno":
        for kind in ActionKind:
            if kind.value == words[0] and kind is not ActionKind.ERRNO:
                return Action(kind)
    if len(words) == 2 and words[0] == "errno":
        name = words[1]
        if name in constants.ERRNOS:
            return Action(ActionKind.ERRNO, constants.ERRNOS[name])
        if name.isdigit() and 0 <= int(name) <= 4095:
            return Action(ActionKind.ERRNO, int(name))
        raise ValueError(f'unknown errno "{name}"')
    raise ValueError(f'unknown action "{text}"')


def format_action(action: Action) -> str:
    """The profile-language spelling of an action (the inverse of parse_action)."""
    if action.kind is ActionKind.ERRNO and action.errno is not None:
        return f"errno {constants.errno_name(action.errno)}"
    return str(action)


_COND = re.compile(
    r"arg(?P<index>\d+)\s*(?:&\s*(?P<mask>[^=!<>]+?)\s*)?(?P<op>==|!=|<=|>=|<|>)\s*(?P<value>.+)"
)
_FLAGS = re.compile(r"arg(?P<index>\d+)\s+(?P<op>has-any|has-all|has-none)\s+(?P<value>.+)")
_OPS = {"==": ArgOp.EQ, "!=": ArgOp.NE, "<": ArgOp.LT, "<=": ArgOp.LE, ">": ArgOp.GT,
        ">=": ArgOp.GE}
COND_EXPECTED = ('"argN OP VALUE" (OP one of == != < <= > >=), "argN & MASK == VALUE", '
                 'or "argN has-any|has-all|has-none FLAGS"')


def parse_condition(text: str) -> list[ArgCondition]:
    """One condition string -> alternatives (more than one only for has-any).

    Raises ValueError with the reason and the 0-based offset in `text` at fault.
    """
    stripped = text.strip()
    m = _FLAGS.fullmatch(stripped) or _COND.fullmatch(stripped)
    if m is None:
        raise _CondError("cannot read this condition", 0, syntax=True)
    index = int(m.group("index"))
    if index > 5:
        raise _CondError(f"argument index {index} out of range (a system call has arg0..arg5)", 0)
    value = _value(m, "value")
    op = m.group("op")
    if op == "has-none":
        return [ArgCondition(index, ArgOp.MASKED_EQ, 0, value)]
    if op == "has-all":
        return [ArgCondition(index, ArgOp.MASKED_EQ, value, value)]
    if op == "has-any":
        bits = [1 << b for b in range(64) if value >> b & 1]
        if not bits:
            raise _CondError("has-any with no flags can never match", m.start("value"))
        return [ArgCondition(index, ArgOp.MASKED_EQ, bit, bit) for bit in bits]
    if m.group("mask") is not None:
        mask = _value(m, "mask")
        if op != "==":
            raise _CondError("a masked argument can only be compared with ==", m.start("op"))
        if value & ~mask:
            raise _CondError(f"{value:#x} has bits outside the mask {mask:#x}: it can never match",
                             m.start("value"))
        return [ArgCondition(index, ArgOp.MASKED_EQ, value, mask)]
    return [ArgCondition(index, _OPS[op], value)]


class _CondError(ValueError):
    def __init__(self, message: str, offset: int, syntax: bool = False) -> None:
        super().__init__(message)
        self.offset = offset
        self.syntax = syntax  # True: show the grammar as what was expected


def _value(m: re.Match[str], group: str) -> int:
    try:
        return constants.parse_value(m.group(group))
    except constants.ConstantError as e:
        raise _CondError(e.message, m.start(group)) from None


def parse_text(text: str, file: str) -> Layer:
    """Parse one profile file's text. `file` is used in errors and origins."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        lines = text.splitlines()
        if m:
            line, col = int(m.group(1)), int(m.group(2))
        else:  # "at end of document": point just past the last character
            line = max(len(lines), 1)
            col = len(lines[-1]) + 1 if lines else 1
        message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(e))
        raise ProfileError(f"invalid TOML: {message}", file=file, line=line, column=col,
                           source_line=lines[line - 1] if 0 < line <= len(lines) else "") from None
    ctx = _Context(file, text)
    layer = Layer(file=file)
    ctx.check_keys((), doc, TOP_KEYS)
    if "description" in doc:
        layer.description = ctx.string(("description",), doc["description"])
    if "extends" in doc:
        target = ctx.string(("extends",), doc["extends"])
        layer.extends = ctx.reference(("extends",), target)
    if "include" in doc:
        for i, target in enumerate(ctx.strings(("include",), doc["include"])):
            path: Path = ("include", i) if isinstance(doc["include"], list) else ("include",)
            layer.includes.append(ctx.reference(path, target))
    if "seccomp" in doc:
        _seccomp(ctx, layer, ctx.table(("seccomp",), doc["seccomp"]))
    if "namespaces" in doc:
        table = ctx.table(("namespaces",), doc["namespaces"])
        ctx.check_keys(("namespaces",), table, NAMESPACE_KEYS)
        for key, value in table.items():
            layer.namespaces[key] = ctx.boolean(("namespaces", key), value)
    if "filesystem" in doc:
        _filesystem(ctx, layer, ctx.table(("filesystem",), doc["filesystem"]))
    if "limits" in doc:
        _limits(ctx, layer, ctx.table(("limits",), doc["limits"]))
    if "environment" in doc:
        _environment(ctx, layer, ctx.table(("environment",), doc["environment"]))
    if "broker" in doc:
        _broker(ctx, layer, ctx.table(("broker",), doc["broker"]))
    return layer


def _action(ctx: _Context, path: Path, value: object) -> Action:
    text = ctx.string(path, value)
    try:
        return parse_action(text)
    except ValueError as e:
        if str(e).startswith("unknown errno"):
            ctx.error(path, str(e), expected=ERRNO_EXPECTED)
        ctx.error(path, str(e), expected=ACTION_EXPECTED)


def _names(ctx: _Context, path: Path, value: object) -> list[tuple[str, tuple[str, ...], Path]]:
    """Expand syscall and @group names: (syscall, groups that led to it, element path)."""
    out: list[tuple[str, tuple[str, ...], Path]] = []
    single = isinstance(value, str)
    for i, name in enumerate(ctx.strings(path, value)):
        where: Path = path if single else (*path, i)
        if name.startswith("@"):
            if name not in syscalls.GROUPS:
                guess = syscalls.suggest(name)
                hint = f' (did you mean "{guess}"?)' if guess else ""
                ctx.error(where, f'unknown group "{name}"{hint}', column_offset=1)
            out.extend((call, via, where) for call, via in syscalls.expand(name))
        elif not syscalls.is_known(name):
            guess = syscalls.suggest(name)
            hint = f' (did you mean "{guess}"?)' if guess else ""
            ctx.error(where, f'unknown system call "{name}"{hint}', column_offset=1)
        elif syscalls.number(name) is not None:
            out.append((name, (), where))
        # else: a real call on another architecture only; nothing to filter here.
    return out


def _seccomp(ctx: _Context, layer: Layer, table: dict[str, object]) -> None:
    base: Path = ("seccomp",)
    ctx.check_keys(base, table, SECCOMP_KEYS)
    if "default-action" in table:
        layer.default_action = _action(ctx, (*base, "default-action"), table["default-action"])
    if "bad-arch-action" in table:
        act = _action(ctx, (*base, "bad-arch-action"), table["bad-arch-action"])
        if act.kind in (ActionKind.ALLOW, ActionKind.LOG, ActionKind.NOTIFY):
            ctx.error((*base, "bad-arch-action"),
                      f'foreign architectures must be refused, not "{act}"',
                      expected='"kill-process", "kill-thread", "errno NAME" or "trap"')
        layer.bad_arch_action = act
    deny_action = Action(ActionKind.ERRNO, constants.ERRNOS["EPERM"])
    if "deny-action" in table:
        deny_action = _action(ctx, (*base, "deny-action"), table["deny-action"])
        if deny_action.kind is ActionKind.ALLOW:
            ctx.error((*base, "deny-action"), '"deny-action" cannot be "allow"',
                      expected=ACTION_EXPECTED)
    if "reset" in table:
        layer.reset.extend(n for n, _, _ in _names(ctx, (*base, "reset"), table["reset"]))
    for key, action, rank in (("allow", Action(ActionKind.ALLOW), RANK_ALLOW),
                              ("deny", deny_action, RANK_DENY)):
        if key in table:
            for call, via, where in _names(ctx, (*base, key), table[key]):
                bonus = 0 if via else RANK_EXPLICIT
                layer.entries.append(Entry(call, action, (), ctx.origin(where, via), rank + bonus))
    if "rules" in table:
        rules = table["rules"]
        if not isinstance(rules, list):
            ctx.error((*base, "rules"), '"seccomp.rules" must be an array of tables',
                      expected="[[seccomp.rules]] entries")
        for i, rule in enumerate(rules):
            _rule(ctx, layer, (*base, "rules", i), rule)


def _rule(ctx: _Context, layer: Layer, path: Path, value: object) -> None:
    rule = ctx.table(path, value)
    ctx.check_keys(path, rule, RULE_KEYS)
    if "syscall" not in rule:
        ctx.error(path, 'rule has no "syscall"', expected='syscall = "NAME" or ["NAME", "@group"]',
                  at_key=True)
    if "action" not in rule:
        ctx.error(path, 'rule has no "action"', expected=ACTION_EXPECTED, at_key=True)
    if "why" in rule:
        ctx.string((*path, "why"), rule["why"])
    action = _action(ctx, (*path, "action"), rule["action"])
    alternatives: list[list[ArgCondition]] = []
    used: dict[int, Path] = {}
    for i, text in enumerate(ctx.strings((*path, "args"), rule.get("args", []))):
        where = (*path, "args", i) if isinstance(rule.get("args"), list) else (*path, "args")
        try:
            alts = parse_condition(text)
        except _CondError as e:
            lead = len(text) - len(text.lstrip())
            ctx.error(where, str(e), expected=COND_EXPECTED if e.syntax else None,
                      column_offset=1 + lead + e.offset)
        index = alts[0].index
        if index in used:
            ctx.error(where, f"arg{index} is already tested in this rule; libseccomp allows one "
                      "test per argument in a rule (write a second rule instead)")
        used[index] = where
        alternatives.append(alts)
    for call, via, where in _names(ctx, (*path, "syscall"), rule["syscall"]):
        for combo in itertools.product(*alternatives):
            conds = tuple(sorted(combo, key=lambda c: c.index))
            layer.entries.append(Entry(call, action, conds, ctx.origin(where, via), RANK_RULE))


def _bind(ctx: _Context, path: Path, value: object, writable: bool, owned: bool = False) -> Bind:
    if isinstance(value, str):
        src = ctx.abspath(path, value)
        _not_reserved(ctx, path, src, False)
        return Bind(src, src, writable, owned=owned)
    entry = ctx.table(path, value)
    ctx.check_keys(path, entry, BIND_KEYS)
    if "source" not in entry:
        ctx.error(path, 'bind has no "source"', expected='{ source = "/path" }')
    src = ctx.abspath((*path, "source"), entry["source"])
    dest = ctx.abspath((*path, "dest"), entry["dest"]) if "dest" in entry else src
    optional = ctx.boolean((*path, "optional"), entry["optional"]) if "optional" in entry else False
    _not_reserved(ctx, (*path, "dest") if "dest" in entry else (*path, "source"), dest, False)
    return Bind(src, dest, writable, optional, owned)


def _not_reserved(ctx: _Context, path: Path, dest: str, tmpfs: bool) -> None:
    r = reserved_dest(dest, tmpfs)
    if r is not None:
        ctx.error(path, f"destination {dest} is reserved (the sandbox mounts its own {r})",
                  expected="a path outside /proc and /dev (a tmpfs may be /dev/shm)")


def _filesystem(ctx: _Context, layer: Layer, table: dict[str, object]) -> None:
    base: Path = ("filesystem",)
    ctx.check_keys(base, table, FILESYSTEM_KEYS)
    # Within one file a destination is used once, by a bind, tmpfs, link, directory or
    # data file (the sandbox refuses two mounts on one path); /tmp is the built-in one.
    seen: dict[str, str] = {"/tmp": "the built-in /tmp"}

    def claim(path: Path, dest: str) -> None:
        clean = clean_dest(dest)
        if clean in seen:
            ctx.error(path, f"destination {clean} is already used by {seen[clean]}",
                      expected="one entry per destination")
        seen[clean] = f"{_dotted(path)} (line {ctx.loc.value(path)[0]})"

    # ro-owned, rw-owned: binds on which the source's owner is the sandbox's uid
    # (idmapped, as root; rw-owned behind the guard filter: see docs/sandbox.md).
    for key, writable, owned in (("ro", False, False), ("rw", True, False),
                                 ("ro-owned", False, True), ("rw-owned", True, True)):
        if key in table:
            items = table[key]
            if not isinstance(items, list):
                ctx.error((*base, key), f'"filesystem.{key}" must be a list',
                          expected='["/path", { source = "/path", optional = true }]')
            for i, v in enumerate(items):
                bind = _bind(ctx, (*base, key, i), v, writable, owned)
                at: Path = (*base, key, i)
                if isinstance(v, dict):
                    at = (*at, "dest" if "dest" in v else "source")
                claim(at, bind.dest)
                layer.binds.append(bind)
    if "tmpfs" in table:
        items = _list(ctx, (*base, "tmpfs"), table["tmpfs"],
                      '["/path", { dest = "/path", size = "16M" }]')
        for i, item in enumerate(items):
            p: Path = (*base, "tmpfs", i)
            if isinstance(item, str):
                layer.tmpfs.append(Tmpfs(ctx.abspath(p, item)))
                _not_reserved(ctx, p, item, True)
                claim(p, item)
                continue
            entry = ctx.table(p, item)
            ctx.check_keys(p, entry, TMPFS_KEYS)
            if "dest" not in entry:
                ctx.error(p, 'tmpfs has no "dest"', expected='{ dest = "/path" }')
            dest = ctx.abspath((*p, "dest"), entry["dest"])
            _not_reserved(ctx, (*p, "dest"), dest, True)
            claim((*p, "dest"), dest)
            if "size" in entry:
                layer.tmpfs.append(Tmpfs(dest, ctx.size((*p, "size"), entry["size"])))
            else:
                layer.tmpfs.append(Tmpfs(dest))
    for key in [k for k in table if k in ("symlinks", "dirs", "data-files")]:  # file order
        _placed(ctx, layer, key, table[key], claim)
    if "tmp-size" in table:
        layer.tmp_size = ctx.size((*base, "tmp-size"), table["tmp-size"])
    if "chdir" in table:
        layer.chdir = ctx.abspath((*base, "chdir"), table["chdir"])


def _list(ctx: _Context, path: Path, value: object, example: str) -> list[object]:
    if not isinstance(value, list):
        ctx.error(path, f'"{_dotted(path)}" must be a list', expected=example)
    return value


_PLACED_EXAMPLES = {
    "symlinks": '[{ dest = "/opt/app/python", target = "/usr/bin/python3" }]',
    "dirs": '["/work", { dest = "/var/cache/app" }]',
    "data-files": '[{ dest = "/etc/app.conf", contents = "..." }]',
}


def _placed(ctx: _Context, layer: Layer, key: str, value: object,
            claim: Callable[[Path, str], None]) -> None:
    """filesystem.symlinks, dirs, data-files: what `--symlink`, `--dir` and
    `--ro-bind-data` place in the new root."""
    base: Path = ("filesystem", key)
    for i, item in enumerate(_list(ctx, base, value, _PLACED_EXAMPLES[key])):
        p: Path = (*base, i)
        if key == "dirs" and isinstance(item, str):
            at = p
            dest = _place_dest(ctx, p, item)
        else:
            entry = ctx.table(p, item)
            ctx.check_keys(p, entry, {"symlinks": SYMLINK_KEYS, "dirs": DIR_KEYS,
                                      "data-files": DATA_FILE_KEYS}[key])
            for needed in ("dest", "target" if key == "symlinks" else
                           "contents" if key == "data-files" else "dest"):
                if needed not in entry:
                    ctx.error(p, f'{_dotted(p)} has no "{needed}"',
                              expected=_PLACED_EXAMPLES[key].strip("[]"), at_key=True)
            at = (*p, "dest")
            dest = _place_dest(ctx, at, entry["dest"])
        thing: Symlink | str | DataFile = dest
        if key == "symlinks":
            target = ctx.string((*p, "target"), entry["target"])
            if not target or "\0" in target:
                ctx.error((*p, "target"), "a link target must be a non-empty path with no "
                          "NUL byte")
            thing = Symlink(dest, target)
        elif key == "data-files":
            contents = ctx.string((*p, "contents"), entry["contents"])
            size = len(contents.encode())
            if size > MAX_DATA_FILE_BYTES:
                ctx.error((*p, "contents"), f"an inline data file holds at most "
                          f"{MAX_DATA_FILE_BYTES >> 20}M ({MAX_DATA_FILE_BYTES} bytes), this "
                          f"one {size}; bind a host file with filesystem.ro instead")
            thing = DataFile(dest, contents)
        claim(at, dest)
        line, _ = ctx.loc.value(at)
        layer.placed[dest] = PlacedEntry(thing, ctx.origin(at), ctx.loc.source_line(line))


def _place_dest(ctx: _Context, path: Path, value: object) -> str:
    """A destination of a link, directory or data file, checked as the sandbox checks
    it (build_spec): absolute, no "..", not the root, not in /proc or /dev."""
    dest = ctx.abspath(path, value)
    if ".." in dest.split("/"):
        ctx.error(path, f'destination {dest} must not contain ".."',
                  expected='an absolute path with no ".." component')
    clean = clean_dest(dest)
    if clean == "/":
        ctx.error(path, "the sandbox root / cannot be replaced", expected="a path below /")
    _not_reserved(ctx, path, clean, False)
    return clean


def _limits(ctx: _Context, layer: Layer, table: dict[str, object]) -> None:
    base: Path = ("limits",)
    ctx.check_keys(base, table, LIMIT_KEYS)
    for key, value in table.items():
        p = (*base, key)
        if key == "memory":
            layer.limits[key] = ctx.size(p, value)
        elif key in ("processes", "open-files"):
            layer.limits[key] = ctx.count(p, value)
        else:
            layer.limits[key] = ctx.seconds(p, value)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _environment(ctx: _Context, layer: Layer, table: dict[str, object]) -> None:
    base: Path = ("environment",)
    ctx.check_keys(base, table, ENVIRONMENT_KEYS)
    if "keep" in table:
        for i, name in enumerate(ctx.strings((*base, "keep"), table["keep"])):
            if not _ENV_NAME.fullmatch(name):
                ctx.error((*base, "keep", i), f'"{name}" is not a variable name',
                          expected="letters, digits and _")
            layer.env_keep.append(name)
    if "set" in table:
        values = ctx.table((*base, "set"), table["set"])
        for name, value in values.items():
            p: Path = (*base, "set", name)
            if not _ENV_NAME.fullmatch(name):
                ctx.error(p, f'"{name}" is not a variable name', expected="letters, digits and _",
                          at_key=True)
            text = ctx.string(p, value)
            if "\0" in text:
                ctx.error(p, "value contains a NUL byte")
            layer.env_set[name] = text


def _broker(ctx: _Context, layer: Layer, table: dict[str, object]) -> None:
    """[broker]: the rules of `--broker-read`, `--broker-write` and `--broker-connect`,
    in their syntax, read by their one parser (warden.profiles.brokerrules)."""
    base: Path = ("broker",)
    ctx.check_keys(base, table, BROKER_KEYS)
    for key in BROKER_KEYS:
        if key not in table:
            continue
        single = isinstance(table[key], str)
        for i, text in enumerate(ctx.strings((*base, key), table[key])):
            where: Path = (*base, key) if single else (*base, key, i)
            try:
                if key == "connect":
                    address = brokerrules.parse_address(text)
                    if address not in layer.broker_connect:
                        layer.broker_connect.append(address)
                    continue
                rule = brokerrules.parse_path(text, write=key == "write")
            except ValueError as e:
                syntax = ("PATH[:links][:fifo][:device]" if key != "connect"
                          else "HOST:PORT[-PORT][/tcp|/udp]")
                ctx.error(where, str(e), expected=None if syntax in str(e) else syntax)
            if rule not in layer.broker_paths:
                layer.broker_paths.append(rule)


__all__ = ["Entry", "Layer", "Placed", "PlacedEntry", "Reference", "clean_dest", "format_action",
           "parse_action", "parse_condition", "parse_text"]

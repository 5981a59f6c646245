"""Find profile files, stack their layers (extends, includes) and flatten them.

Merge order, lowest first: the `extends` parent (itself flattened), each
`include` in order, then the file's own settings. Within one file the most
explicit entry wins: a [[seccomp.rules]] entry, then a call named outright,
then a group member; at equal explicitness `deny` beats `allow` (so "allow
@process, deny unshare" denies unshare, and "deny @file-system, allow fstat"
allows fstat). Across layers, a layer's unconditional rule for a call
replaces the inherited one; conditional rules accumulate; `reset`
drops everything inherited for the calls it names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from warden.profiles import argwidth, probe
from warden.profiles.errors import ProfileError
from warden.profiles.model import (
    Action,
    ArgCondition,
    Bind,
    Environment,
    Filesystem,
    Limits,
    Namespaces,
    Profile,
    SeccompPolicy,
    SyscallRule,
    Tmpfs,
)
from warden.profiles.parser import (
    RANK_RULE,
    Entry,
    Layer,
    Placed,
    Reference,
    parse_condition,
    parse_text,
)

# The built-ins are package data in builtin/ beside this module, found through the
# installed package and never through the working directory or the search path: a
# directory named ./profiles (a checkout's or anyone's) is only ever a user path.
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
# Directories to search for profile names, ':'-separated, before the user's own
# directory (for example "./profiles" to use a project's profiles by name).
PATH_VAR = "WARDEN_PROFILE_PATH"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def user_search_path() -> list[Path]:
    """$WARDEN_PROFILE_PATH's directories, then $XDG_CONFIG_HOME/warden/profiles.

    The current directory is never searched unless WARDEN_PROFILE_PATH names
    it. With neither XDG_CONFIG_HOME nor a home directory (no HOME, no passwd
    entry) there is no user directory to search.
    """
    extra = [Path(d) for d in os.environ.get(PATH_VAR, "").split(":") if d]
    config = os.environ.get("XDG_CONFIG_HOME")
    if not config:
        home = os.path.expanduser("~")
        config = os.path.join(home, ".config") if home != "~" else None
    user = [Path(config) / "warden" / "profiles"] if config else []
    return [*extra, *user]


def default_search_path() -> list[Path]:
    """The user's directories (user_search_path), then the built-ins."""
    return [*user_search_path(), BUILTIN_DIR]


def _is_builtin_dir(directory: Path) -> bool:
    try:
        return Path(probe.real_path(str(directory))) == BUILTIN_DIR
    except OSError:
        return False


def shadow_error(path: Path) -> ProfileError:
    """The one error for a user profile that carries a built-in's name."""
    name = path.stem
    return ProfileError(
        f'this file has the name of the built-in profile "{name}", and a built-in name always '
        f'means the built-in; rename it (for example to "my-{name}.toml") and use that name, '
        "or pass its path", file=str(path))


def _is_file(path: Path) -> bool:
    """Like Path.is_file, but a directory we may not search counts as absent."""
    return probe.is_file(str(path))


def _profiles_in(directory: Path) -> list[str]:
    try:
        return [p.stem for p in directory.glob("*.toml")] if directory.is_dir() else []
    except OSError:
        return []


def is_path(name_or_path: str) -> bool:
    return "/" in name_or_path or name_or_path.endswith(".toml")


def find(name_or_path: str, search_path: Sequence[Path] | None = None,
         relative_to: Path | None = None) -> Path:
    """The file a profile name or path refers to; ProfileError if there is none."""
    if is_path(name_or_path):
        path = Path(name_or_path)
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        try:
            found = path.is_file()
        except OSError as e:
            raise ProfileError(f'cannot read profile file "{name_or_path}": {e.strerror}',
                               file=str(path)) from None
        if not found:
            raise ProfileError(f'no such profile file "{name_or_path}"', file=str(path))
        probe.note(["file", str(path), True])
        return path
    if not name_or_path or not all(c.isalnum() or c in "-_." for c in name_or_path):
        raise ProfileError(f'"{name_or_path}" is not a profile name',
                           expected="letters, digits, '-', '_' or a path")
    # An explicit search path replaces the user directories. A built-in name is
    # the built-in; a same-named file on the user's path is refused, not skipped,
    # so nobody runs under a profile other than the one they think they named.
    users = user_search_path() if search_path is None else list(search_path)
    builtin = BUILTIN_DIR / f"{name_or_path}.toml"
    if _is_file(builtin):
        for directory in users:
            candidate = directory / f"{name_or_path}.toml"
            if _is_file(candidate) and not _is_builtin_dir(directory):
                raise shadow_error(candidate)
        return builtin
    for directory in users:
        candidate = directory / f"{name_or_path}.toml"
        if _is_file(candidate):
            return candidate
    dirs = [*users, BUILTIN_DIR]
    known = sorted({stem for d in dirs for stem in _profiles_in(d)})
    import difflib

    close = difflib.get_close_matches(name_or_path, known, n=1, cutoff=0.6)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    raise ProfileError(f'no profile named "{name_or_path}"{hint}',
                       expected="one of " + ", ".join(known) if known else None)


@dataclass
class _Slot:
    """The rules for one call: its unconditional rule and its conditional ones."""

    uncond: SyscallRule | None = None
    cond: list[SyscallRule] = field(default_factory=list)


@dataclass
class _State:
    """A profile being flattened."""

    description: str = ""
    default_action: Action | None = None
    bad_arch_action: Action | None = None
    slots: dict[str, _Slot] = field(default_factory=dict)
    namespaces: dict[str, bool] = field(default_factory=dict)
    binds: dict[str, Bind] = field(default_factory=dict)  # by dest: later wins
    tmpfs: dict[str, Tmpfs] = field(default_factory=dict)
    tmp_size: int | None = None
    chdir: str | None = None
    limits: dict[str, int | float] = field(default_factory=dict)
    env_keep: list[str] = field(default_factory=list)
    env_set: dict[str, str] = field(default_factory=dict)
    placed: Placed = field(default_factory=Placed)  # links, dirs, data files; [broker]


def _via(rule: SyscallRule, label: str) -> SyscallRule:
    origin = rule.origin
    if origin is None:
        return rule
    return replace(rule, origin=replace(origin, via=(label, *origin.via)))


def _merge(into: _State, other: _State, label: str) -> None:
    """Stack an already flattened `other` (a parent or include) onto `into`."""
    if other.description and not into.description:
        into.description = other.description
    into.default_action = other.default_action or into.default_action
    into.bad_arch_action = other.bad_arch_action or into.bad_arch_action
    for name, slot in other.slots.items():
        mine = into.slots.setdefault(name, _Slot())
        if slot.uncond is not None:
            mine.uncond = _via(slot.uncond, label)
        for rule in slot.cond:
            _add_cond(mine, _via(rule, label))
    into.namespaces.update(other.namespaces)
    into.binds.update(other.binds)
    into.tmpfs.update(other.tmpfs)
    into.tmp_size = other.tmp_size or into.tmp_size
    into.chdir = other.chdir or into.chdir
    into.limits.update(other.limits)
    into.env_keep.extend(k for k in other.env_keep if k not in into.env_keep)
    into.env_set.update(other.env_set)
    into.placed.merge(other.placed)


def _add_cond(slot: _Slot, rule: SyscallRule) -> None:
    for existing in slot.cond:
        if existing.action == rule.action and existing.conditions == rule.conditions:
            return
    slot.cond.append(rule)


def _apply_own(state: _State, layer: Layer) -> None:
    """The layer's own settings, on top of what it inherited."""
    if layer.description is not None:
        state.description = layer.description
    state.default_action = layer.default_action or state.default_action
    state.bad_arch_action = layer.bad_arch_action or state.bad_arch_action
    for name in layer.reset:
        state.slots.pop(name, None)
    winners: dict[str, Entry] = {}
    for entry in layer.entries:
        if entry.conditions:
            rule = SyscallRule(entry.syscall, entry.action, entry.conditions, entry.origin)
            _add_cond(state.slots.setdefault(entry.syscall, _Slot()), rule)
            continue
        best = winners.get(entry.syscall)
        if best is None or entry.rank > best.rank:
            winners[entry.syscall] = entry
        elif entry.rank == best.rank:
            if entry.action != best.action and entry.rank >= RANK_RULE:
                o = entry.origin
                raise ProfileError(
                    f'conflicting rules for "{entry.syscall}": {entry.action} here, '
                    f"{best.action} at {best.origin}",
                    file=o.file, line=o.line, column=o.column,
                    source_line=_line_of(o.file, o.line))
            if best.origin.via and not entry.origin.via:
                winners[entry.syscall] = entry  # a name written out beats a group member
    for name, entry in winners.items():
        slot = state.slots.setdefault(name, _Slot())
        slot.uncond = SyscallRule(name, entry.action, (), entry.origin)
    state.namespaces.update(layer.namespaces)
    state.binds.update({b.dest: b for b in layer.binds})
    state.tmpfs.update({t.dest: t for t in layer.tmpfs})
    state.tmp_size = layer.tmp_size or state.tmp_size
    state.chdir = layer.chdir or state.chdir
    state.limits.update(layer.limits)
    state.env_keep.extend(k for k in layer.env_keep if k not in state.env_keep)
    state.env_set.update(layer.env_set)
    state.placed.apply(layer)


def _line_of(file: str, line: int) -> str:
    try:  # through probe.read: no FIFO, device or giant file, even for an error's excerpt
        lines = probe.read(file)[1].decode(errors="replace").splitlines()
    except OSError:
        return ""
    return lines[line - 1] if 0 < line <= len(lines) else ""


def _display(path: Path) -> str:
    """Paths under the working directory are shown relative to it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def _parse(text: str, file: str) -> Layer:
    """parse_text, then refuse argument tests the kernel would not see
    (warden.profiles.argwidth)."""
    layer = parse_text(text, file)
    for entry in layer.entries:
        for cond in entry.conditions:
            if not argwidth.covers_only_read_bits(entry.syscall, cond):
                raise _width_error(entry, cond, text)
    return layer


def _width_error(entry: Entry, cond: ArgCondition, text: str) -> ProfileError:
    """The error for `cond`, pointing at the condition string that wrote it."""
    import tomllib

    from warden.profiles.locator import Locator

    o = entry.origin
    loc = Locator(text)
    rules = tomllib.loads(text).get("seccomp", {}).get("rules", [])
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        names = rule.get("syscall")
        base = ("seccomp", "rules", i, "syscall")
        at = [base] if isinstance(names, str) else [(*base, j) for j in range(len(names or []))]
        if not any(loc.value(p) == (o.line, o.column) for p in at):
            continue
        args = rule.get("args", [])
        for j, written in enumerate([args] if isinstance(args, str) else args):
            try:
                index = parse_condition(written)[0].index
            except ValueError:
                continue
            if index != cond.index:
                continue
            path = ("seccomp", "rules", i, "args") if isinstance(args, str) else \
                ("seccomp", "rules", i, "args", j)
            line, col = loc.value(path)
            col += 1 + len(written) - len(written.lstrip())
            return ProfileError(argwidth.problem(entry.syscall, cond, written) or "",
                                file=o.file, line=line, column=col,
                                source_line=loc.source_line(line))
    return ProfileError(argwidth.problem(entry.syscall, cond, str(cond)) or "", file=o.file,
                        line=o.line, column=o.column, source_line=loc.source_line(o.line))


class _Resolver:
    def __init__(self, search_path: Sequence[Path] | None) -> None:
        self.search_path = search_path
        self.stack: list[Path] = []

    def load(self, path: Path) -> _State:
        try:
            # Resolved and read through probe: the parsed-profile cache checks the same.
            resolved, data = probe.read(str(path))
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ProfileError(f"cannot read profile: {e}", file=_display(path)) from None
        real = Path(resolved)
        self.stack.append(real)
        try:
            return self.flatten(_parse(text, _display(path)), real.parent)
        finally:
            self.stack.pop()

    def flatten(self, layer: Layer, base: Path) -> _State:
        """Parent, then includes, then the layer itself; references resolve from `base`."""
        state = _State()
        if layer.extends is not None:
            parent = self._follow(layer.extends, base, "extends")
            _merge(state, parent, f"extends {layer.extends.target}")
        for inc in layer.includes:
            _merge(state, self._follow(inc, base, "include"), f"include {inc.target}")
        _apply_own(state, layer)
        return state

    def _follow(self, ref: Reference, base: Path, kind: str) -> _State:
        try:
            if kind == "include" and not ref.target.endswith(".toml") and "/" not in ref.target:
                target = find(ref.target + ".toml", relative_to=base)
            else:
                target = find(ref.target, self.search_path, relative_to=base)
        except ProfileError as e:
            raise ProfileError(e.message, file=ref.file, line=ref.line, column=ref.column,
                               source_line=_line_of(ref.file, ref.line),
                               expected=e.expected) from None
        real = target.resolve()
        if real in self.stack:
            cycle = [*self.stack[self.stack.index(real):], real]
            names = " -> ".join(_display(p) for p in cycle)
            raise ProfileError(f"{kind} cycle: {names}", file=ref.file, line=ref.line,
                               column=ref.column, source_line=_line_of(ref.file, ref.line))
        try:
            return self.load(target)
        except ProfileError as e:
            raise e.with_chain(ref.where) from None


def _to_profile(name: str, source: str, state: _State) -> Profile:
    rules: list[SyscallRule] = []
    for slot in state.slots.values():
        rules.extend(slot.cond)
        if slot.uncond is not None:
            rules.append(slot.uncond)
    defaults = SeccompPolicy()
    seccomp = SeccompPolicy(
        default_action=state.default_action or defaults.default_action,
        rules=tuple(rules),
        bad_arch_action=state.bad_arch_action or defaults.bad_arch_action,
    )
    fs_defaults = Filesystem()
    lim = state.limits
    return state.placed.finish(Profile(
        name=name,
        source=source,
        description=state.description,
        seccomp=seccomp,
        namespaces=Namespaces(**state.namespaces),
        filesystem=Filesystem(
            # Parents before children (/etc before /etc/ssl), so no bind hides another.
            binds=tuple(sorted(state.binds.values(), key=lambda b: b.dest.rstrip("/").count("/"))),
            tmpfs=tuple(state.tmpfs.values()),
            tmp_size_bytes=state.tmp_size or fs_defaults.tmp_size_bytes,
            chdir=state.chdir or fs_defaults.chdir,
        ),
        limits=Limits(
            memory_bytes=_int(lim.get("memory")),
            processes=_int(lim.get("processes")),
            open_files=_int(lim.get("open-files")),
            cpu_time_seconds=_float(lim.get("cpu-time")),
            wall_time_seconds=_float(lim.get("wall-time")),
        ),
        environment=Environment(keep=tuple(state.env_keep), set=tuple(state.env_set.items())),
    ))


def _int(value: int | float | None) -> int | None:
    return None if value is None else int(value)


def _float(value: int | float | None) -> float | None:
    return None if value is None else float(value)


def load_profile(name_or_path: str, *, search_path: Sequence[Path] | None = None) -> Profile:
    """Load and flatten a profile by name or by path.

    A name is looked up in `search_path` (default: ./profiles, then
    $XDG_CONFIG_HOME/warden/profiles) and then among the built-ins; a
    string containing "/" or ending in ".toml" is a path.
    """
    path = find(name_or_path, search_path)
    state = _Resolver(search_path).load(path)
    return _to_profile(path.stem, _display(path), state)


def load_profile_traced(name_or_path: str) -> tuple[Profile, list[list[object]]]:
    """load_profile(name_or_path), and every file-system answer it rested on (probe.Trace):
    what the parsed-profile cache checks before it reuses the profile."""
    with probe.Trace() as trace:
        profile = load_profile(name_or_path)
    return profile, trace.entries


def load_text(text: str, *, name: str = "inline", file: str = "<string>",
              search_path: Sequence[Path] | None = None) -> Profile:
    """Flatten a profile given as text (extends/includes resolve from the cwd)."""
    state = _Resolver(search_path).flatten(_parse(text, file), Path.cwd())
    return _to_profile(name, file, state)


__all__ = ["builtin_names", "default_search_path", "find", "load_profile", "load_text"]

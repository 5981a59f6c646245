"""Brokered paths: prefixes with modes, each held as a directory fd, resolved beneath it.

Parent, outside the sandbox, with the supervisor's privilege. A `PathRule`
names a host path (a directory, or one file) and what may be done there:
`read`, `write`, `create`, `truncate`. The `PathPolicy` opens each prefix once,
when it is made, under the host-path rule (hostpath.open_path: no link
anywhere in it) and keeps the O_PATH fd. A request is then

1. split into the components that name a rule's prefix (the longest match
   wins) and the remainder, which is never interpreted here: a `..` in it, a
   link, a mount crossing, a magic link are the kernel's to judge;
2. opened from the rule's fd with openat2 RESOLVE_BENEATH |
   RESOLVE_NO_MAGICLINKS (and RESOLVE_NO_SYMLINKS unless the rule allows
   links: even then a link may only lead somewhere beneath the prefix), with
   O_NONBLOCK | O_NOCTTY | O_CLOEXEC, so the open never waits on a FIFO or a
   device and a tty never becomes ours;
3. kept only if fstat of the new fd says it is a regular file (a FIFO or a
   device only where the rule names that kind; a directory never: a directory
   fd in the child would let its own `openat(fd, "..")` walk the host tree
   with no broker in the way); O_TRUNC is applied with ftruncate only then.

A path of PATH_MAX bytes or more, or one with a NUL, is refused before any
lookup, as the kernel would (ENAMETOOLONG, EINVAL).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import stat
from collections.abc import Iterable

from warden.profiles import brokerrules
from warden.supervisor.broker.decision import Decision, Refused
from warden.supervisor.sandbox import _sys, hostpath

# The rules' one syntax and check, shared with the profile parser.
MODES, KINDS, PATH_MAX = brokerrules.MODES, brokerrules.KINDS, brokerrules.PATH_MAX
RESOLVE_BENEATH = 0x08

# Flags of the child's open that are carried over as they are; everything else
# (O_PATH, O_TMPFILE, O_ASYNC, O_DIRECT, O_NOATIME...) is not brokered.
_CARRIED = os.O_APPEND | os.O_SYNC | os.O_DSYNC | os.O_NOFOLLOW
_REFUSED_FLAGS = (os.O_PATH | getattr(os, "O_TMPFILE", 0) | os.O_DIRECTORY
                  | getattr(os, "O_ASYNC", 0x2000))
# Errors of the supervisor's own open the child is told as they are (it would see
# them itself); any other is EACCES (the request left the rule, or met a kind it
# may not have).
_PASSED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                     errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EROFS,
                     errno.ENOSPC, errno.EDQUOT, errno.ETXTBSY})


def _components(path: str) -> tuple[str, ...]:
    return tuple(c for c in path.split("/") if c not in ("", "."))


@dataclasses.dataclass(frozen=True)
class PathRule:
    """`prefix` (an absolute host path with no link in it) and what the child may do
    beneath it. `links`: symbolic links beneath the prefix are followed (never out
    of it); `kinds`: "fifo", "device" opened too (never a directory)."""

    prefix: str
    modes: frozenset[str] = frozenset({"read"})
    links: bool = False
    kinds: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", frozenset(self.modes))
        object.__setattr__(self, "kinds", frozenset(self.kinds))
        check_rule(self)

    @classmethod
    def read(cls, prefix: str) -> PathRule:
        """`--broker-read PATH`: read only."""
        return cls(prefix, frozenset({"read"}))

    @classmethod
    def write(cls, prefix: str) -> PathRule:
        """`--broker-write PATH`: read, write, create and truncate."""
        return cls(prefix, frozenset(MODES))

    @classmethod
    def parse(cls, text: str, *, write: bool = False) -> PathRule:
        """`PATH[:links][:fifo][:device]` as `--broker-read` (or, with `write`,
        `--broker-write`) and a profile's `broker.read` / `broker.write` lists give it
        (the one syntax: warden.profiles.brokerrules)."""
        rule = brokerrules.parse_path(text, write=write)
        return cls(rule.prefix, frozenset(MODES if rule.write else ("read",)), links=rule.links,
                   kinds=frozenset(rule.kinds))

    def spelled(self) -> str:
        extra = [*(["links"] if self.links else []), *sorted(self.kinds)]
        return (f"{self.prefix} ({','.join(m for m in MODES if m in self.modes)}"
                f"{''.join(';' + e for e in extra)})")


def check_rule(rule: PathRule) -> None:
    """The one validator of a path rule, for every source (CLI, profile, API)."""
    problem = brokerrules.path_problem(rule.prefix, rule.modes, rule.kinds)
    if problem:
        raise ValueError(problem)


@dataclasses.dataclass(frozen=True)
class OpenRequest:
    """What the child asked for, in the open(2) terms both brokers receive."""

    path: str  # the child's path, as it sent it (os.fsdecode of the bytes)
    flags: int  # open(2) flags as the child passed them
    mode: int = 0o666  # creation mode

    @property
    def access(self) -> int:
        return self.flags & os.O_ACCMODE

    def wants(self) -> set[str]:
        want = set()
        if self.access in (os.O_RDONLY, os.O_RDWR):
            want.add("read")
        if self.access in (os.O_WRONLY, os.O_RDWR) or self.flags & os.O_APPEND:
            want.add("write")
        if self.flags & os.O_CREAT:
            want.add("create")
        if self.flags & os.O_TRUNC and self.access != os.O_RDONLY:
            want.add("truncate")
        return want


@dataclasses.dataclass(frozen=True)
class _Held:
    rule: PathRule
    parts: tuple[str, ...]
    dir_fd: int
    name: str | None  # a rule naming one file: its name in dir_fd


class PathPolicy:
    """The path rules of one sandbox, each held as an O_PATH fd of the supervisor."""

    def __init__(self, rules: Iterable[PathRule]) -> None:
        self._held: list[_Held] = []
        try:
            for rule in rules:
                self._held.append(self._hold(rule))
        except BaseException:
            self.close()
            raise
        # Longest prefix first: the most specific rule decides.
        self._held.sort(key=lambda h: -len(h.parts))

    @staticmethod
    def _hold(rule: PathRule) -> _Held:
        what = f"broker path {rule.prefix}"
        fd, st = hostpath.open_path(rule.prefix, what)
        kind = hostpath.kind_of(st.st_mode)
        parts = _components(rule.prefix)
        if kind == "directory":
            return _Held(rule, parts, fd, None)
        os.close(fd)
        if kind != "file" and kind not in rule.kinds:
            raise hostpath.HostPathError(errno.EINVAL, f"{what} was refused: it is a {kind}; "
                                         "the broker hands out regular files (a FIFO or a "
                                         "device only where the rule names that kind)",
                                         rule.prefix)
        parent, _slash, name = rule.prefix.rstrip("/").rpartition("/")
        pfd, _pst = hostpath.open_path(parent or "/", what)
        return _Held(rule, parts, pfd, name)

    @property
    def rules(self) -> tuple[PathRule, ...]:
        return tuple(h.rule for h in self._held)

    def close(self) -> None:
        for h in self._held:
            with contextlib.suppress(OSError):
                os.close(h.dir_fd)
        self._held = []

    def _match(self, path: str) -> tuple[_Held, str] | None:
        """The rule naming `path` and the remainder beneath its fd, or None."""
        if not path.startswith("/"):
            return None
        comps = [c for c in path.split("/") if c]
        for h in self._held:
            i = 0
            matched = 0
            while matched < len(h.parts) and i < len(comps):
                if comps[i] == ".":
                    i += 1
                    continue
                if comps[i] != h.parts[matched]:
                    break
                matched += 1
                i += 1
            if matched != len(h.parts):
                continue
            rest = "/".join(comps[i:]) + ("/" if path.endswith("/") and comps[i:] else "")
            if h.name is not None:
                rest = h.name + ("/" + rest if rest else "")
            return h, rest or "."
        return None

    def names(self, path: str) -> bool:
        """Whether some rule names `path` (so the broker, not the sandbox, answers it)."""
        return self._match(path) is not None

    def open(self, req: OpenRequest, *, no_links: bool = False) -> tuple[int, Decision]:
        """Open `req` by the rule naming it; the fd (close-on-exec, blocking unless the
        child asked for O_NONBLOCK) and the decision. Raises Refused, also for a path
        no rule names (its decision's rule is None). `no_links`: follow no link even
        where the rule would (the caller asked for RESOLVE_NO_SYMLINKS)."""
        if "\0" in req.path:
            raise Refused(Decision.refuse(errno.EINVAL, None, "the path contains a NUL"))
        if len(os.fsencode(req.path)) >= PATH_MAX:
            raise Refused(Decision.refuse(errno.ENAMETOOLONG, None,
                                          f"the path is {PATH_MAX} bytes or longer"))
        found = self._match(req.path)
        if found is None:
            raise Refused(Decision.refuse(errno.EACCES, None, "no rule names this path"))
        held, rest = found
        rule = held.rule.spelled()
        if req.flags & _REFUSED_FLAGS:
            raise Refused(Decision.refuse(errno.EACCES, rule, "O_PATH, O_TMPFILE, O_DIRECTORY "
                                          "and O_ASYNC opens are not brokered"))
        want = req.wants()
        create = "create" in want and "create" in held.rule.modes
        missing = sorted(want - held.rule.modes - {"create"})
        if missing or ("create" in want and not create and req.flags & os.O_EXCL):
            refused = ", ".join(missing) or "create"
            raise Refused(Decision.refuse(errno.EACCES, rule,
                                          f"the rule does not allow {refused}"))
        flags = (req.access | (req.flags & _CARRIED) | os.O_NONBLOCK | os.O_NOCTTY
                 | os.O_CLOEXEC | (req.flags & (os.O_CREAT | os.O_EXCL) if create else 0))
        resolve = RESOLVE_BENEATH | _sys.RESOLVE_NO_MAGICLINKS | (
            0 if held.rule.links and not no_links else _sys.RESOLVE_NO_SYMLINKS)
        fd = self._openat2(held, rest, flags, req.mode & 0o777, resolve, rule,
                           "create" in want and not create)
        try:
            st = os.fstat(fd)
            kind = hostpath.kind_of(st.st_mode)
            if kind != "file" and kind not in held.rule.kinds:
                raise Refused(Decision.refuse(errno.EACCES, rule, f"it is a {kind}; the rule "
                                              "hands out regular files"))
            if not req.flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            if "truncate" in want and stat.S_ISREG(st.st_mode):
                os.ftruncate(fd, 0)
        except Refused:
            os.close(fd)
            raise
        except OSError as e:
            os.close(fd)
            raise Refused(Decision.refuse(e.errno or errno.EIO, rule, e.strerror or "")) from None
        return fd, Decision.allow(rule, f"opened {kind_name(st.st_mode)} beneath the rule")

    def lookup(self, path: str, *, follow: bool = True) -> tuple[int, PathRule, Decision]:
        """An O_PATH fd of `path` by the rule naming it (for stat and access: O_PATH opens
        nothing, so any kind will do), that rule and the decision; raises Refused. Without
        `follow` a link as the last component is the link itself."""
        if "\0" in path or len(os.fsencode(path)) >= PATH_MAX:
            raise Refused(Decision.refuse(errno.ENAMETOOLONG, None, "not a usable path"))
        found = self._match(path)
        if found is None:
            raise Refused(Decision.refuse(errno.EACCES, None, "no rule names this path"))
        held, rest = found
        rule = held.rule.spelled()
        resolve = RESOLVE_BENEATH | _sys.RESOLVE_NO_MAGICLINKS | (
            0 if held.rule.links else _sys.RESOLVE_NO_SYMLINKS)
        flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        fd = self._openat2(held, rest, flags, 0, resolve, rule, False)
        return fd, held.rule, Decision.allow(rule, "looked up beneath the rule")

    @staticmethod
    def _openat2(held: _Held, rest: str, flags: int, mode: int, resolve: int, rule: str,
                 create_refused: bool) -> int:
        for _attempt in range(8):
            try:
                return _sys.openat2(held.dir_fd, os.fsencode(rest), flags, mode, resolve)
            except OSError as e:
                err = e.errno or errno.EIO
                if err == errno.EAGAIN:  # a concurrent rename: the kernel asks for a retry
                    continue
                if err == errno.ENOENT and create_refused:
                    raise Refused(Decision.refuse(errno.EACCES, rule, "it does not exist, and "
                                                  "the rule does not allow create")) from None
                if err in (errno.EXDEV, errno.ELOOP):
                    reason = ("it leads out of the rule's directory" if err == errno.EXDEV else
                              "a symbolic link or a magic link is on its way")
                    raise Refused(Decision.refuse(errno.EACCES, rule, reason)) from None
                if err == errno.ENXIO:
                    raise Refused(Decision.refuse(errno.EACCES, rule, "a FIFO with no reader, "
                                                  "or a socket")) from None
                raise Refused(Decision.refuse(err if err in _PASSED else errno.EACCES, rule,
                                              os.strerror(err))) from None
        raise Refused(Decision.refuse(errno.EAGAIN, rule, "the directory kept changing"))


def kind_name(mode: int) -> str:
    return {"file": "a regular file", "fifo": "a FIFO", "device": "a device"}.get(
        hostpath.kind_of(mode), "a special file")

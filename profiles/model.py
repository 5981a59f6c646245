"""The parsed, frozen form of a profile: what the parser builds and everything else reads.

A profile describes the whole sandbox, not only seccomp. Every field's default
is the safe choice (deny by default, every namespace new, nothing bound, no
network, no variables), so a missing section can only make a sandbox tighter.
The sandbox (`warden.supervisor.sandbox`) and the compiler (`warden.profiles.compiler`) take
these objects and nothing else; they never look at TOML.
"""

from __future__ import annotations

import enum
from dataclasses import field

# The classes are frozen dataclasses, processed by dataclass() on first use (records.py):
# `warden run` with a cached profile never pays for most of them.
from warden.profiles.records import LazyRecord, lazy_frozen


class ActionKind(enum.Enum):
    """What the seccomp filter does with a matching call (libseccomp's SCMP_ACT_*)."""

    ALLOW = "allow"
    KILL_PROCESS = "kill-process"
    KILL_THREAD = "kill-thread"
    ERRNO = "errno"
    TRAP = "trap"
    LOG = "log"
    NOTIFY = "user-notify"


@lazy_frozen
class Action(LazyRecord):
    """An action; `errno` is set exactly when kind is ERRNO."""

    kind: ActionKind
    errno: int | None = None

    def __str__(self) -> str:
        if self.kind is ActionKind.ERRNO:
            return f"errno {self.errno}"
        return str(self.kind.value)


ALLOW = Action(ActionKind.ALLOW)
KILL_PROCESS = Action(ActionKind.KILL_PROCESS)


@lazy_frozen
class Origin(LazyRecord):
    """Where a rule came from, for `warden profile show` and error messages.

    `via` is the chain that brought it in, outermost first: for example
    ("extends default", "@file-system").
    """

    file: str
    line: int
    column: int
    via: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where} (via {', '.join(self.via)})" if self.via else where


class ArgOp(enum.Enum):
    """Comparison on one 64-bit syscall argument (libseccomp's SCMP_CMP_*)."""

    EQ = "=="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    MASKED_EQ = "&="  # (arg & mask) == value


@lazy_frozen
class ArgCondition(LazyRecord):
    """`arg[index] op value`, with symbolic constants already resolved to ints."""

    index: int  # 0..5
    op: ArgOp
    value: int
    mask: int = 0  # only for MASKED_EQ

    def __str__(self) -> str:
        if self.op is ArgOp.MASKED_EQ:
            return f"arg{self.index} & {self.mask:#x} == {self.value:#x}"
        return f"arg{self.index} {self.op.value} {self.value:#x}"


@lazy_frozen
class SyscallRule(LazyRecord):
    """One libseccomp rule: the action applies when every condition holds (AND)."""

    syscall: str
    action: Action
    conditions: tuple[ArgCondition, ...] = ()
    origin: Origin | None = None


@lazy_frozen
class SeccompPolicy(LazyRecord):
    """The seccomp part of a profile, already flattened (groups, extends, includes)."""

    default_action: Action = KILL_PROCESS
    rules: tuple[SyscallRule, ...] = ()
    # Calls from a foreign architecture (x32, i386 on x86_64) get this action.
    bad_arch_action: Action = KILL_PROCESS


@lazy_frozen
class Namespaces(LazyRecord):
    """True means the child gets a new namespace of that kind (isolated)."""

    user: bool = True
    pid: bool = True
    mount: bool = True
    net: bool = True  # False: the child shares the host network
    ipc: bool = True
    uts: bool = True
    cgroup: bool = True


@lazy_frozen
class Bind(LazyRecord):
    """A bind mount of a host path into the new root."""

    source: str
    dest: str
    writable: bool = False
    optional: bool = False  # a missing source is skipped instead of an error
    # As root: an idmapped bind, on which the source's owner (uid and gid) is the
    # sandbox's own id, so the sandbox reads with the owner's rights there (git
    # trusts a repository). Read-only binds only (build_spec refuses a writable one).
    owned: bool = False


# Mount points every sandbox makes itself: no bind or tmpfs may replace them,
# except a tmpfs on /dev/shm, which then replaces the built-in one (its size).
RESERVED_DESTS = ("/proc", "/dev")
SHM_DEST = "/dev/shm"


def reserved_dest(dest: str, tmpfs: bool = False) -> str | None:
    """The reserved mount (/proc, /dev) `dest` lies in, or None when it may be used.

    The one rule: `warden profile check` (the parser) and `warden run` (build_spec)
    both ask it, so run never refuses what check accepted."""
    clean = "/" + "/".join(p for p in dest.split("/") if p and p != ".")
    if tmpfs and clean == SHM_DEST:
        return None
    for r in RESERVED_DESTS:
        if clean == r or clean.startswith(r + "/"):
            return r
    return None


@lazy_frozen
class Tmpfs(LazyRecord):
    """An empty tmpfs mounted at `dest` inside the sandbox."""

    dest: str
    size_bytes: int = 64 * 1024 * 1024


@lazy_frozen
class Filesystem(LazyRecord):
    """What the sandbox's new root holds besides /proc, /dev and /tmp."""

    binds: tuple[Bind, ...] = ()
    tmpfs: tuple[Tmpfs, ...] = ()
    # Size of the private /tmp tmpfs every sandbox gets.
    tmp_size_bytes: int = 64 * 1024 * 1024
    chdir: str = "/"


@lazy_frozen
class Limits(LazyRecord):
    """Resource limits; None means the sandbox's built-in cap (see warden.supervisor.sandbox)."""

    memory_bytes: int | None = None
    processes: int | None = None
    open_files: int | None = None
    cpu_time_seconds: float | None = None
    wall_time_seconds: float | None = None


@lazy_frozen
class Environment(LazyRecord):
    """Variables the child gets beyond the sandbox's fixed minimal set."""

    keep: tuple[str, ...] = ()  # copied from the caller's environment when present
    set: tuple[tuple[str, str], ...] = ()


@lazy_frozen
class Profile(LazyRecord):
    """A flattened profile: everything a sandbox needs, extends and includes applied."""

    name: str
    source: str  # file path, or "<builtin:NAME>"-style label
    description: str = ""
    seccomp: SeccompPolicy = field(default_factory=SeccompPolicy)
    namespaces: Namespaces = field(default_factory=Namespaces)
    filesystem: Filesystem = field(default_factory=Filesystem)
    limits: Limits = field(default_factory=Limits)
    environment: Environment = field(default_factory=Environment)

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


# The most an inline data file (filesystem.data-files) may hold: it is kept in the
# profile and in memory, and copied into the sandbox before it starts.
MAX_DATA_FILE_BYTES = 1 << 20


@lazy_frozen
class Symlink(LazyRecord):
    """A symbolic link made at `dest` inside the sandbox, pointing to `target` (a path
    inside the sandbox, absolute or relative to the link's directory; never followed
    by warden)."""

    dest: str
    target: str


@lazy_frozen
class DataFile(LazyRecord):
    """A read-only file (mode 0444) at `dest` inside the sandbox holding `contents`,
    UTF-8 encoded (at most MAX_DATA_FILE_BYTES bytes). Text, as a profile holds it;
    binary data is bound from a file."""

    dest: str
    contents: str


@lazy_frozen
class Filesystem(LazyRecord):
    """What the sandbox's new root holds besides /proc, /dev and /tmp."""

    binds: tuple[Bind, ...] = ()
    tmpfs: tuple[Tmpfs, ...] = ()
    # Size of the private /tmp tmpfs every sandbox gets.
    tmp_size_bytes: int = 64 * 1024 * 1024
    chdir: str = "/"
    # Placed in the new root as `--symlink`, `--dir` and `--ro-bind-data` place them.
    symlinks: tuple[Symlink, ...] = ()
    dirs: tuple[str, ...] = ()
    data_files: tuple[DataFile, ...] = ()


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
class BrokerPath(LazyRecord):
    """A host path (a directory, or one file) whose files the transparent broker opens
    for the sandbox with the supervisor's rights (`broker.read`, `broker.write`; the
    `--broker-read`/`--broker-write` syntax, PATH[:links][:fifo][:device])."""

    prefix: str
    write: bool = False  # False: read only; True: read, write, create and truncate
    links: bool = False  # follow symbolic links beneath the prefix (never out of it)
    kinds: tuple[str, ...] = ()  # "fifo", "device": handed out too


@lazy_frozen
class BrokerAddress(LazyRecord):
    """Connections the transparent broker makes for the sandbox (`broker.connect`, the
    `--broker-connect` syntax HOST:PORT[-PORT][/tcp|/udp]): `host` a name, an IP or a
    CIDR range, on ports `low`..`high`."""

    host: str
    low: int
    high: int
    protocol: str = "tcp"


@lazy_frozen
class Broker(LazyRecord):
    """What the transparent broker answers for the sandbox ([broker]); empty: no broker."""

    paths: tuple[BrokerPath, ...] = ()
    connect: tuple[BrokerAddress, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.paths or self.connect)


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
    broker: Broker = field(default_factory=Broker)

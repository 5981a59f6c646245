"""The setup channel between the parent and a starting sandbox: its steps and its messages.

The channel is a close-on-exec SOCK_SEQPACKET pair (one message per record,
end-of-file exactly when the workload has exec'ed). What crosses it is a
declared message below, never a bare byte: each has one tag byte and a fixed
layout, encoded by `encode` and decoded by `decode`, which checks the tag,
the exact length, the ranges and the text, and raises SetupProtocolError for
anything else. What the child sends is untrusted from the moment it is
cloned: the parent turns such an error into a setup failure of the step
`supervisor`, never into a crash of its own.

(Not msgspec, as supervisor/bootstrap.py uses: importing it costs `warden run`
more at start-up than the whole setup conversation, and these six records are
fixed-size.)

    Message        from              to        when
    InitPid        cloner (A/zygote) parent    the init exists (its cloner is not the parent)
    ReadyForMaps   init              parent    dumpable: newuidmap may act on it now
    MapsWritten    parent            init      the id maps are written
    CgroupJoined   parent            init      the init is in its cgroup: fork the workload
    ListenerFd     init              parent    + SCM_RIGHTS: the workload's seccomp listener
    Failed         init, workload    parent    a step failed: (step, errno, message)
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from warden.errors import ChildFailed
from warden.supervisor.sandbox.errors import SandboxError


class SetupStep(enum.Enum):
    """Every place a sandbox's start can fail, one member per call site, in the order
    they run (docs/sandbox.md, "Setup order", lists them). The value is what the
    setup_error record and `warden run` call the step."""

    CLONE = "clone"                        # parent or cloner: clone(2) into the namespaces
    PROCTITLE = "proctitle"                # init: its name and argv, as ps shows them
    DUMPABLE = "dumpable"                  # init: the parent may write its /proc id maps
    SESSION = "session"                    # init: a session of its own
    PDEATHSIG = "pdeathsig"                # init: SIGKILL when the parent dies
    CLOSE_FDS = "close_fds"                # init: none of the parent's fds but its own
    USERNS = "userns"                      # init (ordinary user): writes its own id maps
    AWAIT_MAPS = "await_maps"              # init: waits for the parent's id maps
    PARENT_MAPS = "parent_maps"            # parent: writes the maps (root) or newuidmap
    IPC_LIMITS = "ipc_limits"              # parent (root, no cgroup): the IPC namespace's caps
    USERNS_LIMITS = "userns_limits"        # init: lowers the user namespace's limits
    IDS = "ids"                            # init: becomes the sandbox's inner id
    PDEATHSIG_AGAIN = "pdeathsig_again"    # init: the id change cleared it
    KEYRING = "keyring"                    # init: a new session keyring
    MOUNT = "mount"                        # init: the new root
    USERNS_MOUNT_LIMIT = "userns_mount_limit"  # init: the limit the mount step needed open
    PROC_KEYS = "proc_keys"                # init: /proc/keys masked
    UTS = "uts"                            # init: host name
    NET = "net"                            # init: loopback up
    RLIMITS = "rlimits"                    # init: the limits init and workload share
    FDS = "fds"                            # init: the fd map
    LANDLOCK_RULESET = "landlock_ruleset"  # init: the workload's ruleset, built
    LISTENER_SLOT = "listener_slot"        # init: where the workload's listener will land
    EXEC = "exec"                          # init: the program found and its exec prepared
    SECCOMP_PREPARE = "seccomp_prepare"    # init: the filter's load prepared
    SECCOMP_GUARD_PREPARE = "seccomp_guard_prepare"  # init: the guard's load, where there is one
    CGROUP = "cgroup"                      # parent: moves the init into its cgroup
    AWAIT_CGROUP = "await_cgroup"          # init: waits for that
    CGROUPNS = "cgroupns"                  # init: a cgroup namespace rooted there
    NOT_DUMPABLE = "not_dumpable"          # init: its memory unreadable to the sandbox
    CAPS = "caps"                          # init: the bounding set emptied
    SECUREBITS = "securebits"              # init: securebits locked
    CLEAR_CAPS = "clear_caps"              # init: every capability set emptied
    NO_NEW_PRIVS = "no_new_privs"          # init: no_new_privs
    RESET_SIGNALS = "reset_signals"        # init: default dispositions
    BLOCK_SIGNALS = "block_signals"        # init: what it waits for, blocked
    PIDNS = "pidns"                        # init: forks the workload (pid 2)
    SIGNALS = "signals"                    # workload: an empty signal mask
    PROCESS_GROUP = "process_group"        # workload: its own process group
    LANDLOCK = "landlock"                  # workload: the ruleset enforced
    LATE_RLIMITS = "late_rlimits"          # workload: RLIMIT_AS/NOFILE/FSIZE/MSGQUEUE
    SECCOMP_GUARD = "seccomp_guard"        # workload: the guard, stacked under the filter
    SECCOMP = "seccomp"                    # workload: the filter, last before exec
    LISTENER = "listener"                  # init: hands the listener to the parent
    CLOSE_FDS_INIT = "close_fds_init"      # init: keeps only its status pipe
    SUPERVISOR = "supervisor"              # parent: timeout, or the child broke the protocol


_STEPS = tuple(SetupStep)
MAX_MESSAGE_BYTES = 300  # of a Failed record's text (the child's; a record is capped)
MAX_RECORD = 1 + 1 + 4 + MAX_MESSAGE_BYTES


class SetupProtocolError(SandboxError, ChildFailed, ValueError):
    """A record on the setup channel that is none of the declared messages."""


class InitPid(NamedTuple):
    """From the process that cloned the init, when it is not the parent: the init's pid."""

    pid: int


class ReadyForMaps(NamedTuple):
    """From the init (subordinate ids): it is dumpable, newuidmap may write its maps."""


class MapsWritten(NamedTuple):
    """From the parent: the init's id maps are written; go on."""


class CgroupJoined(NamedTuple):
    """From the parent: the init is in its cgroup; the workload may be forked."""


class ListenerFd(NamedTuple):
    """From the init, with exactly one descriptor (SCM_RIGHTS): the seccomp listener."""


class Failed(NamedTuple):
    """From the init or the workload: a setup step failed, and why."""

    step: SetupStep
    errno: int
    message: str


Message = InitPid | ReadyForMaps | MapsWritten | CgroupJoined | ListenerFd | Failed

_PID = struct.Struct("=i")
_FAILED = struct.Struct("=Bi")
_TAGS: dict[type, bytes] = {InitPid: b"P", ReadyForMaps: b"U", MapsWritten: b"G",
                            CgroupJoined: b"C", ListenerFd: b"L", Failed: b"E"}
_EMPTY: dict[bytes, Message] = {b"U": ReadyForMaps(), b"G": MapsWritten(),
                                b"C": CgroupJoined(), b"L": ListenerFd()}


def encode(msg: Message) -> bytes:
    """One record. A Failed message's text is cut to MAX_MESSAGE_BYTES, at a
    character boundary (its decoder refuses text that is not UTF-8)."""
    tag = _TAGS[type(msg)]
    if isinstance(msg, InitPid):
        return tag + _PID.pack(msg.pid)
    if isinstance(msg, Failed):
        text = msg.message.encode("utf-8", "replace")[:MAX_MESSAGE_BYTES]
        return (tag + _FAILED.pack(_STEPS.index(msg.step), msg.errno)
                + text.decode("utf-8", "ignore").encode())
    return tag


def decode(data: bytes) -> Message:
    """The message `data` is; SetupProtocolError for anything that is not one."""
    if not data:
        raise SetupProtocolError("an empty record")
    tag, body = data[:1], data[1:]
    if tag in _EMPTY:
        if body:
            raise SetupProtocolError(f"{len(body)} stray bytes after {tag!r}")
        return _EMPTY[tag]
    if tag == b"P":
        if len(body) != _PID.size:
            raise SetupProtocolError(f"a pid record of {len(body)} bytes")
        pid = _PID.unpack(body)[0]
        if pid <= 0:
            raise SetupProtocolError(f"pid {pid}")
        return InitPid(pid)
    if tag == b"E":
        if not _FAILED.size <= len(body) <= _FAILED.size + MAX_MESSAGE_BYTES:
            raise SetupProtocolError(f"a failure record of {len(body)} bytes")
        index, err = _FAILED.unpack_from(body)
        if index >= len(_STEPS):
            raise SetupProtocolError(f"step number {index}")
        if not 0 < err < 4096:
            raise SetupProtocolError(f"errno {err}")
        try:
            text = body[_FAILED.size:].decode("utf-8")
        except UnicodeDecodeError:
            raise SetupProtocolError("a failure message that is not UTF-8") from None
        return Failed(_STEPS[index], err, text)
    raise SetupProtocolError(f"unknown tag {tag!r}")

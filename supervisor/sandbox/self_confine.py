"""The confinement steps a process applies to itself, for workers made without spawn().

`spawn()` confines a program from the outside. A zygote, and the workers it
(or the `fork` start method) forks, confine themselves instead: they clone
into their own namespaces, arm the parent-death signal, close what they
must not hold, drop capabilities and set no_new_privs before loading their
seccomp filter. These are those steps, each one named for what it does, so
that code outside this package never reaches into its private syscall
wrappers. Each raises OSError (caps steps: caps.CapsError, an OSError) with
the errno on failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import struct

from warden.supervisor.sandbox import _sys, caps, keyring, landlock, proctitle, userns
from warden.supervisor.sandbox.seccomp import PreparedFilter

__all__ = [
    "clear_capabilities",
    "close_fds",
    "fork_into_new_namespaces",
    "hide_parent_argv",
    "hide_proc",
    "is_dumpable",
    "join_new_session_keyring",
    "lock_parent_death_signal",
    "map_own_ids",
    "mask_proc_keys",
    "mount_own_proc",
    "mount_private_tmp",
    "scope_landlock",
    "set_dumpable",
    "set_no_new_privs",
    "set_parent_death_signal",
]

_PR_GET_DUMPABLE = 3
# User and PID: the worker is pid 1 of a namespace nobody else is in. Mount and IPC,
# owned by that new user namespace: its own /proc and /tmp (mount_own_proc,
# mount_private_tmp) and its own SysV IPC and POSIX message queues.
_NEW_NAMESPACES = (_sys.CLONE_NEWUSER | _sys.CLONE_NEWPID | _sys.CLONE_NEWNS | _sys.CLONE_NEWIPC
                   | signal.SIGCHLD)


def fork_into_new_namespaces(*, as_sibling: bool = False) -> int:
    """Fork into new user, PID, mount and IPC namespaces (the child is pid 1 of its own).

    Returns 0 in the child and the child's pid in the caller, like os.fork().
    It is a raw clone(2): CPython's fork hooks do not run, so call it only
    from a single-threaded process. `as_sibling` (CLONE_PARENT): the child
    becomes a child of the caller's parent, which then reaps it.
    """
    return _sys.clone(_NEW_NAMESPACES | (_sys.CLONE_PARENT if as_sibling else 0))


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent (thread) dies.

    The caller must check afterwards that the parent is still alive (its
    pidfd not readable): a parent that died before this call sends nothing.
    """
    _sys.prctl(_sys.PR_SET_PDEATHSIG, sig)


def set_dumpable(dumpable: bool) -> None:
    """PR_SET_DUMPABLE: a non-dumpable process leaves no core dump and cannot be
    ptraced, nor its /proc/PID/mem read, by other processes of the same uid."""
    _sys.prctl(_sys.PR_SET_DUMPABLE, int(dumpable))


def is_dumpable() -> bool:
    return bool(_sys.prctl(_PR_GET_DUMPABLE))


def close_fds(first: int, last: int = 0xFFFFFFFF) -> None:
    """Close every descriptor numbered first..last (close_range(2), a loop before 5.9)."""
    _sys.close_range(first, last)


def clear_capabilities() -> None:
    """Empty the permitted, effective and inheritable sets and the ambient set.

    The bounding set is left as is: with no_new_privs set and an unmapped
    uid, no exec can raise capabilities again.
    """
    caps.child_clear_capabilities()


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: no exec can gain privilege (setuid bits and file
    capabilities are inert); required to load a seccomp filter unprivileged."""
    caps.child_no_new_privs()


def hide_parent_argv(title: bytes) -> None:
    """Overwrite the argv and environ strings inherited from the parent (see proctitle)."""
    proctitle.child_hide_parent_argv(title)


def join_new_session_keyring() -> None:
    """Leave the parent's session keyring for a new, empty one (see keyring)."""
    keyring.child_join_session_keyring()


# ------------------------------------------------------------- parent-death lock

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_EPERM = 1
_X32_BIT = 0x40000000
# prctl's number for every ABI a process of this machine can enter the kernel with:
# (AUDIT_ARCH_*, numbers). x86_64 also takes i386 (int 0x80) and x32 calls.
_PRCTL = {"x86_64": ((0xC000003E, (157, _X32_BIT | 157)), (0x40000003, (172,))),
          "aarch64": ((0xC00000B7, (167,)), (0x40000028, (172,)))}[os.uname().machine]


def _pdeathsig_lock() -> bytes:
    """BPF: prctl(PR_SET_PDEATHSIG, ...) -> EPERM, everything else allowed.

    seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low 32 bits: prctl's
    option is an int, the kernel reads no more)."""
    code: list[tuple[int, int, int, int]] = [(_BPF_LD_W_ABS, 0, 0, 16)]
    deny: list[int] = []  # indexes of jumps to patch to the final ERRNO
    allow_at: list[int] = [len(code)]
    code.append((_BPF_JEQ_K, 0, 0, _sys.PR_SET_PDEATHSIG))  # jf -> allow, patched below
    for arch, numbers in _PRCTL:
        code.append((_BPF_LD_W_ABS, 0, 0, 4))
        skip = len(code)
        code.append((_BPF_JEQ_K, 0, 0, arch))  # jf -> next arch, patched below
        code.append((_BPF_LD_W_ABS, 0, 0, 0))
        for nr in numbers:
            deny.append(len(code))
            code.append((_BPF_JEQ_K, 0, 0, nr))
        code.append((_BPF_RET_K, 0, 0, _RET_ALLOW))
        code[skip] = (_BPF_JEQ_K, 0, len(code) - skip - 1, arch)
    allow = len(code)
    code.append((_BPF_RET_K, 0, 0, _RET_ALLOW))
    errno_at = len(code)
    code.append((_BPF_RET_K, 0, 0, _RET_ERRNO | _EPERM))
    for i in allow_at:
        c = code[i]
        code[i] = (c[0], 0, allow - i - 1, c[3])
    for i in deny:
        c = code[i]
        code[i] = (c[0], errno_at - i - 1, 0, c[3])
    return b"".join(struct.pack("<HBBI", *c) for c in code)


_LOCK = _pdeathsig_lock()


def lock_parent_death_signal() -> None:
    """Make the parent-death signal set now unchangeable by this process's code.

    A forked worker that is pid 1 of its own PID namespace takes every process
    of that namespace with it when it dies, but only if it dies: with
    prctl(PR_SET_PDEATHSIG, 0) it would outlive its parent, and with it every
    process it forked (setsid or not). This seccomp filter answers EPERM to
    every PR_SET_PDEATHSIG (a filter cannot be removed, and its children
    inherit it). Nothing else clears the signal for it: the kernel does so only
    when credentials change (impossible with no capabilities and one uid) or
    on a set-id exec (inert under no_new_privs). Call while holding
    CAP_SYS_ADMIN in the own user namespace, or after no_new_privs.
    """
    PreparedFilter(_LOCK, listener=False).load()


# ------------------------------------------------------------- own /proc, /tmp, scope

def map_own_ids(outer_uid: int, outer_gid: int) -> None:
    """Map INNER_ID in this process's new user namespace to the ids it had before
    the clone (the one mapping the kernel lets a process write for itself; setgroups
    denied). Unmapped ids cannot create files in a filesystem the namespace
    mounts, such as the worker's own /tmp; access rights do not change (the
    kernel checks the same outer ids)."""
    # A non-dumpable process's /proc/self files belong to global root, which no
    # capability in this namespace overrides: dumpable while writing, as the
    # sandbox's init does (the worker runs only trusted code here).
    set_dumpable(True)
    try:
        userns.write_maps("self", outer_uid, outer_gid, deny_setgroups=True)
    finally:
        set_dumpable(False)


def mount_own_proc() -> None:
    """A fresh procfs on /proc, showing only this process's PID namespace.

    Without it a worker reads the procfs it inherited: the zygote sandbox's
    (the zygote, every sibling worker) or, forked from the supervisor, the
    host's. Needs CAP_SYS_ADMIN in the user namespace owning the PID and mount
    namespaces (right after fork_into_new_namespaces)."""
    _sys.mount(b"proc", b"/proc", b"proc", _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC)


def hide_proc() -> None:
    """An empty, read-only tmpfs over /proc: for when a procfs of its own is refused."""
    _sys.mount(b"tmpfs", b"/proc", b"tmpfs",
               _sys.MS_RDONLY | _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC, b"size=4k")


def mask_proc_keys() -> None:
    """/dev/null over /proc/keys and /proc/key-users (see keyring.child_mask_proc_keys)."""
    keyring.child_mask_proc_keys()


def mount_private_tmp(size_bytes: int, keep: tuple[str, ...] = ()) -> None:
    """An empty tmpfs of its own on /tmp (mode 1777, `size_bytes` at most).

    `keep`: paths below /tmp the process still needs (its code: a checkout or a venv
    in /tmp, which the zygote binds and a fork worker imports from). Each is opened
    (O_PATH) before the tmpfs hides it, then bound again at its own path from that fd
    (through /proc/self/fd, so nothing is looked up in the hidden tree by name)."""
    held: list[tuple[str, int, bool]] = []
    try:
        for path in keep:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            held.append((path, fd, stat.S_ISDIR(os.fstat(fd).st_mode)))
        _sys.mount(b"tmpfs", b"/tmp", b"tmpfs", _sys.MS_NOSUID | _sys.MS_NODEV,
                   b"size=%d,mode=1777" % size_bytes)
        for path, fd, is_dir in held:
            if is_dir:
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            # Recursive: the binds below it come along, and the kernel refuses a plain
            # bind of a mount whose children are locked (a less privileged namespace's).
            _sys.mount(b"/proc/self/fd/%d" % fd, os.fsencode(path), None,
                       _sys.MS_BIND | _sys.MS_REC)
    finally:
        for _path, fd, _is_dir in held:
            os.close(fd)


def _unescape_mountinfo(field: bytes) -> str:
    """mountinfo's octal escapes (\\040 for a space) undone, with no codec lookup (a
    forked worker must not import anything here)."""
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i] == 0x5C and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8) & 0xFF)
            i += 4
        else:
            out.append(field[i])
            i += 1
    return os.fsdecode(bytes(out))


def paths_below_tmp(search_path: list[str]) -> tuple[str, ...]:
    """What a private /tmp must keep: every mount point below /tmp (the binds of a
    zygote's sandbox), and each entry of `search_path` (sys.path) below /tmp that is
    not inside one kept already (a recursive bind of the outer one brings it along)."""
    mounts: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = _unescape_mountinfo(line.split()[4])
            if point.startswith("/tmp/"):
                mounts.append(point)
    found = mounts + [os.path.realpath(e) for e in search_path if e]
    keep: list[str] = []
    for path in sorted({p for p in found if p.startswith("/tmp/") and os.path.exists(p)},
                       key=lambda p: p.count("/")):
        if not any(path == k or path.startswith(k + "/") for k in keep):
            keep.append(path)  # a recursive bind of its parent brings it along
    return tuple(keep)


def scope_landlock(abi: int, rules: tuple[tuple[bytes, int], ...] = ()) -> None:
    """Enter a Landlock domain of its own: `rules` [(path, rights)] for the filesystem
    (none: the filesystem is not handled) and, with ABI 6 or later, scoped, so no
    abstract unix socket and no signal of this process reaches one outside it
    (a sibling, the zygote). Landlock refuses mounts to a process whose domain
    handles the filesystem: call after the mounts. No-op when abi is 0."""
    if abi <= 0 or (abi < 6 and not rules):
        return
    ruleset = landlock.child_ruleset(abi, rules, handle_fs=bool(rules))
    try:
        landlock.child_restrict(ruleset)
    finally:
        os.close(ruleset)

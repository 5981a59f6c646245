"""Loading the compiled seccomp filter in the child, last, right before exec.

The filter arrives as raw `struct sock_filter[]` bytes compiled in the parent.
When it reports kill actions through user-notify, the child loads it with
SECCOMP_FILTER_FLAG_NEW_LISTENER; the listener lands in the descriptor table
the workload still shares with its init (see child.py), which hands it to
the supervisor after the exec. With it goes SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
(Linux 5.19): once the supervisor has received a refused call, the caller's
own signals no longer interrupt its wait, only the supervisor's kill ends it
(see notify.py for the time before it is received, and how a call withdrawn
then is still seen). A kernel without the flag
refuses it with EINVAL; the filter is then loaded without it, and the
sandbox's status names that in its `weakened` list.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import os
import stat
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from warden.errors import ChildFailed, InvalidInput
from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.errors import SandboxError

if TYPE_CHECKING:
    from warden.profiles.model import SeccompPolicy

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 1 << 4
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5
RET_ACTION_FULL = 0xFFFF0000
RET_USER_NOTIF = 0x7FC00000

_BPF_RET_K = 0x06
_INSN = struct.Struct("<HBBI")
_MAX_INSNS = 4096


class SeccompError(SandboxError, ChildFailed, OSError):
    """Loading the filter failed (the kernel's errno is kept)."""


def problem(bpf: bytes) -> str | None:
    """Why the kernel would refuse this program outright, or None."""
    if not bpf or len(bpf) % _INSN.size:
        return "not a whole number of 8-byte BPF instructions"
    if len(bpf) // _INSN.size > _MAX_INSNS:
        return f"{len(bpf) // _INSN.size} instructions (the kernel takes at most {_MAX_INSNS})"
    return None


def _insns(data: bytes) -> list[tuple[int, int, int, int]]:
    return [_INSN.unpack_from(data, i) for i in range(0, len(data), _INSN.size)]


def allows_execve(bpf: bytes) -> bool | None:
    """Whether the filter lets execve through (None: no BPF interpreter to ask).

    The filter is loaded right before exec, so a profile that refuses execve
    can start nothing; and a refusal reported through user-notify would wait
    for a listener that only exists after the exec."""
    try:
        from warden.profiles.bpf import evaluate
    except ImportError:
        return None
    ret = int(evaluate(bpf, _sys.NR["execve"], (0,) * 6, arch=_sys.AUDIT_ARCH))
    return (ret & RET_ACTION_FULL) == 0x7FFF0000


def uses_notify(bpf: bytes) -> bool:
    """True if some path of the filter returns SECCOMP_RET_USER_NOTIF."""
    return any(code == _BPF_RET_K and (k & RET_ACTION_FULL) == RET_USER_NOTIF
               for code, _jt, _jf, k in _insns(bpf))


WEAKENED_WAIT_KILLABLE = ("seccomp wait-killable receive (this kernel has none: a refused call "
                          "the supervisor has read can still be interrupted by the sandbox's "
                          "own signals; it is reported all the same)")


def wait_killable_supported() -> bool:
    """Whether this kernel takes SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (Linux 5.19)."""
    # "6.18.44-fc-v857": the leading digits of the first two fields.
    fields = [*os.uname().release.split("."), "0"][:2]
    major, minor = (int("".join(itertools.takewhile(str.isdigit, f)) or 0) for f in fields)
    return (major, minor) >= (5, 19)


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


class PreparedFilter:
    """The filter and the calls around it, built before the child's last steps."""

    def __init__(self, bpf: bytes, listener: bool, all_threads: bool = False) -> None:
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _Fprog(len(bpf) // _INSN.size, ctypes.cast(self._buf, ctypes.c_char_p))
        self.listener = listener
        self._flags = (SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
                       if listener else 0)
        if all_threads:
            # Every thread of the process gets the filter, not only the caller: a thread
            # started before it (by code that ran first) would otherwise run unfiltered.
            # TSYNC_ESRCH (Linux 5.7) lets TSYNC go with a listener; a thread that cannot
            # be synchronised makes the load fail (ESRCH), never half-apply.
            self._flags |= SECCOMP_FILTER_FLAG_TSYNC | (
                SECCOMP_FILTER_FLAG_TSYNC_ESRCH if listener else 0)
        self._syscall = _sys.libc.syscall
        self._nr_seccomp = ctypes.c_long(_sys.NR["seccomp"])

    def load(self) -> int:
        """Install the filter; returns the listener fd (or 0). Raises SeccompError."""
        ret = self._load(self._flags)
        if ret < 0 and ctypes.get_errno() == errno.EINVAL and \
                self._flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV:
            # Before Linux 5.19: the same listener, without the killable wait.
            ret = self._load(self._flags & ~SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
        if ret < 0:
            err = ctypes.get_errno()
            raise SeccompError(err, "seccomp(SECCOMP_SET_MODE_FILTER)")
        return ret

    def _load(self, flags: int) -> int:
        return int(self._syscall(self._nr_seccomp, ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                                 ctypes.c_uint(flags), ctypes.byref(self._prog)))


def child_prepare(bpf: bytes, listener: bool) -> PreparedFilter:
    """In the init, before the workload is forked: the load, ready to be one call."""
    return PreparedFilter(bpf, listener)


def child_load(filt: PreparedFilter) -> None:
    """In the workload, last before exec: the filter (its listener, if any, lands in
    the descriptor table the workload still shares with the init)."""
    filt.load()


# ------------------------------------------------------------------ the guard
# A second, small filter, stacked under the profile's (loaded just before it,
# without a listener): it answers a few calls with an errno where the profile
# would let them through. Of stacked filters the kernel takes the strictest
# verdict (kill > trap > errno > user-notify > allow), so the guard's errno
# wins over the profile's allow and never over its kill; and between equal
# verdicts the newest filter's stands, so the profile's user-notify verdicts
# still reach its listener.

# The set*id calls, with how many ids each takes.
_SETID_CALLS = (("setuid", 1), ("setgid", 1), ("setreuid", 2), ("setregid", 2),
                ("setresuid", 3), ("setresgid", 3))
_NO_CHANGE = 0xFFFFFFFF  # (uid_t)-1: "leave this id as it is"
# The chown calls, with the index of the uid argument (the gid follows it).
_CHOWN_CALLS = (("chown", 1), ("fchown", 1), ("lchown", 1), ("fchownat", 2))

# Calls taking a mode, with the index of the mode argument.
_MODE_CALLS = (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2),
               ("mkdir", 1), ("mkdirat", 2), ("mknod", 1), ("mknodat", 2), ("creat", 1))
# Calls whose mode counts only with O_CREAT or O_TMPFILE: (flags index, mode index).
_OPEN_CALLS = (("open", 1, 2), ("openat", 2, 3))
_SETID_BITS = (stat.S_ISUID, stat.S_ISGID)
_S_IFMT = 0o170000  # (stat.S_IFMT is a function)
# O_TMPFILE is __O_TMPFILE | O_DIRECTORY: its own bit alone says "create".
_CREATING = tuple(f for f in (os.O_CREAT, getattr(os, "O_TMPFILE", 0) & ~os.O_DIRECTORY) if f)


class GuardError(SandboxError, InvalidInput, ValueError):
    """A sandbox the guard cannot make safe (a writable owned bind with nested user
    namespaces); the message names the bind."""


def check_owned_writable(binds: Sequence[tuple[str, str]],
                         userns_limits: Sequence[tuple[str, int]]) -> None:
    """A writable owned bind stays safe only while nothing in the sandbox can hold a
    capability over its files: a nested user namespace would hold CAP_FSETID (a setuid
    bit kept on a write) and CAP_SETFCAP (a file capability for the owner, root) there.
    `binds`: (source, dest) of the writable owned binds."""
    if binds and dict(userns_limits).get("max_user_namespaces", 0) > 0:
        src, dest = binds[0]
        raise GuardError(f"writable owned bind {src} on {dest}: refused with userns_limits "
                         "max_user_namespaces above 0 (a nested user namespace would hold "
                         "capabilities over the owner's files); leave that limit at 0, or "
                         "bind it with --bind")


def parent_guard(profile_filter: bytes, owned_writable: Sequence[tuple[str, str]] = (),
                 userns_limits: Sequence[tuple[str, int]] = ()) -> bytes:
    """Parent, before the clone, from the spec as launched: the guard filter for a
    sandbox whose profile compiled to `profile_filter`, with these writable owned binds
    ((source, dest)) and user-namespace limits; raw BPF for child_prepare, or b"" when
    it needs none. Raises GuardError for what check_owned_writable refuses.

    A sandbox that may hold nested user namespaces (a zygote: its workers are each
    one) gets no set*id answers: the ids there are the nested namespaces' own, and the
    workers' filters, stacked later, decide (an errno here would outrank their kills)."""
    check_owned_writable(owned_writable, userns_limits)
    nested = dict(userns_limits).get("max_user_namespaces", 0) > 0
    return _guard_code(profile_filter, bool(owned_writable), not nested)


@functools.lru_cache(maxsize=16)
def _guard_code(profile_filter: bytes, owned_writable: bool, setid: bool) -> bytes:
    from warden.supervisor.sandbox.userns import INNER_ID

    policy = guard_policy(profile_filter, own_id=INNER_ID, owned_writable=owned_writable,
                          setid=setid)
    return b"" if policy is None else assemble(policy)


def guard_policy(profile_filter: bytes, *, own_id: int, owned_writable: bool,
                 setid: bool = True) -> SeccompPolicy | None:
    """What the guard means, as a policy of the profile language (None: no guard).

    Two parts:

    - (with `setid`) set*id calls the profile allows, answered as the kernel answers an
      unprivileged process. The sandbox's user namespace maps one id, and the
      kernel checks that an id is mapped before it checks privilege, so
      setuid(0) gets EINVAL where a program expects EPERM. The guard answers
      EPERM to every id but `own_id` and -1 (no change), which the kernel then
      handles itself (setuid(-1) stays EINVAL, as everywhere). setgroups
      needs CAP_SETGID in any case (EPERM from the kernel), and
      setfsuid/setfsgid report the old id without failing: neither needs it.
      The chown family's owner and group get the same answers (EPERM for
      an id other than `own_id` or -1; the kernel then judges the file).
      A call the profile does not allow is left to the profile (a kill stays
      a kill).
    - with a writable owned (idmapped) bind: nothing the sandbox leaves behind
      may gain privilege on the host, where its files belong to the bound
      directory's owner, often root. Refused with EPERM: a set-id bit in any
      mode (chmod and mknod families, mkdir, creat, and open/openat when they
      create), character and block devices, hard links (on the idmapped mount
      the sandbox owns every file of the owner, so the kernel's
      protected_hardlinks lets it link even a setuid one), and io_uring (its
      operations bypass seccomp). openat2 carries its mode in a struct the
      filter cannot read: ENOSYS, on which callers fall back to openat. These
      hold whatever the profile says of the calls. File capabilities need
      CAP_SETFCAP, which nothing in the sandbox ever holds (every set empty,
      and no nested user namespace: spec.py refuses raising
      max_user_namespaces with such a bind), so the kernel refuses those
      itself, as it clears S_ISUID and S_ISGID of a file written to without
      CAP_FSETID.
    """
    from warden.profiles import syscalls
    from warden.profiles.model import (
        ALLOW,
        KILL_PROCESS,
        Action,
        ActionKind,
        ArgCondition,
        ArgOp,
        SeccompPolicy,
        SyscallRule,
    )

    eperm = Action(ActionKind.ERRNO, errno.EPERM)
    rules: list[SyscallRule] = []

    def masked(index: int, mask: int, value: int | None = None) -> ArgCondition:
        return ArgCondition(index, ArgOp.MASKED_EQ, mask if value is None else value, mask)

    from warden.profiles.bpf import decode

    insns = decode(profile_filter) if setid else []
    for name, count in _SETID_CALLS if setid else ():
        nr = syscalls.number(name)
        if nr is None or not _allows(insns, nr, (0,) * count):
            continue
        rules.append(SyscallRule(name, eperm))
        # Each id its own or -1, in every combination.
        for ids in itertools.product((own_id, _NO_CHANGE), repeat=count):
            rules.append(SyscallRule(name, ALLOW, tuple(
                ArgCondition(i, ArgOp.EQ, v) for i, v in enumerate(ids))))
    for name, uid_at in _CHOWN_CALLS if setid else ():
        # The same for an owner or group given to chown: the kernel would say EINVAL
        # for an id the namespace cannot map, where an unprivileged process gets EPERM.
        nr = syscalls.number(name)
        if nr is None or not _allows(insns, nr, (0,) * (uid_at + 2)):
            continue
        rules.append(SyscallRule(name, eperm))
        for ids in itertools.product((own_id, _NO_CHANGE), repeat=2):
            rules.append(SyscallRule(name, ALLOW, tuple(
                ArgCondition(uid_at + i, ArgOp.EQ, v) for i, v in enumerate(ids))))
    if owned_writable:
        for name, mode in _MODE_CALLS:
            rules.extend(SyscallRule(name, eperm, (masked(mode, bit),)) for bit in _SETID_BITS)
        for name, mode in (("mknod", 1), ("mknodat", 2)):
            rules.extend(SyscallRule(name, eperm, (masked(mode, _S_IFMT, kind),))
                         for kind in (stat.S_IFCHR, stat.S_IFBLK))
        for name, flags, mode in _OPEN_CALLS:
            rules.extend(SyscallRule(name, eperm, (masked(flags, create), masked(mode, bit)))
                         for create in _CREATING for bit in _SETID_BITS)
        rules.extend(SyscallRule(name, eperm) for name in ("link", "linkat", "io_uring_setup"))
        rules.append(SyscallRule("openat2", Action(ActionKind.ERRNO, errno.ENOSYS)))
    if not rules:
        return None
    return SeccompPolicy(default_action=ALLOW, rules=tuple(rules), bad_arch_action=KILL_PROCESS)


def _allows(insns: Sequence[Any], nr: int, args: tuple[int, ...]) -> bool:
    """Whether the decoded filter lets this call through (its verdict, run by our
    interpreter)."""
    from warden.profiles import bpf

    ret = bpf.run(insns, bpf.seccomp_data(nr, args, arch=_sys.AUDIT_ARCH))
    return (ret & RET_ACTION_FULL) == bpf.SECCOMP_RET_ALLOW


def assemble(policy: SeccompPolicy) -> bytes:
    """The guard's policy as raw BPF, with the profile language's precedence for each
    call (conditional non-allow rules, conditional allows, the unconditional rule,
    the default) and user-notify for a foreign architecture (never the verdict that
    stands: the profile's own filter refuses those first, see above).

    Written out here rather than through libseccomp (warden.profiles.compiler): the
    guard is made for every sandbox that has one, where the compiler (its import,
    its verification) would cost `warden run` more than the whole sandbox start,
    and it is not the profile's to cache. Its shape is fixed and small: equality
    and masked-equality tests only. tests/sandbox/test_sandbox_setid_answers.py
    holds every variant against the compiler's verifier (compiler.verify)."""
    from warden.profiles import bpf, syscalls
    from warden.profiles.model import ActionKind, ArgOp

    def value(kind: ActionKind, err: int | None) -> int:
        if kind is ActionKind.ERRNO:
            return bpf.SECCOMP_RET_ERRNO | (err or 0)
        if kind is ActionKind.ALLOW:
            return bpf.SECCOMP_RET_ALLOW
        raise ValueError(f"the guard answers with errno or allow, not {kind.value}")

    ld = bpf.BPF_LD | bpf.BPF_W | bpf.BPF_ABS
    jeq = bpf.BPF_JMP | bpf.BPF_JEQ | bpf.BPF_K
    ret = bpf.BPF_RET | bpf.BPF_K
    notify = bpf.SECCOMP_RET_USER_NOTIF
    out: list[list[int]] = [  # [code, jt, jf, k]
        [ld, 0, 0, 4],  # seccomp_data.arch
        [jeq, 1, 0, _sys.AUDIT_ARCH],
        [ret, 0, 0, notify],
        [ld, 0, 0, 0],  # seccomp_data.nr, in A until a call's own block
    ]
    if _sys.AUDIT_ARCH == bpf.AUDIT_ARCH_X86_64:  # x32 calls: the same arch, bit 30 set
        out += [[bpf.BPF_JMP | bpf.BPF_JGE | bpf.BPF_K, 0, 1, syscalls.X32_SYSCALL_BIT],
                [ret, 0, 0, notify]]
    by_call: dict[str, list[Any]] = {}
    for r in policy.rules:
        if syscalls.number(r.syscall) is not None:
            by_call.setdefault(r.syscall, []).append(r)
    default = value(policy.default_action.kind, policy.default_action.errno)
    for call, rules in by_call.items():
        cond = [r for r in rules if r.conditions]
        ordered = ([r for r in cond if r.action.kind is not ActionKind.ALLOW]
                   + [r for r in cond if r.action.kind is ActionKind.ALLOW])
        uncond = [r for r in rules if not r.conditions][-1:]
        fallback = value(uncond[0].action.kind, uncond[0].action.errno) if uncond else default
        # Another call: jump over this block, with nr still in A (ja takes a 32-bit
        # offset; the 8-bit jt/jf of a test might not reach).
        out.append([jeq, 1, 0, syscalls.number(call) or 0])
        skip = len(out)
        out.append([bpf.BPF_JMP | bpf.BPF_JA, 0, 0, 0])
        for r in ordered:
            fails: list[int] = []  # tests whose jf goes to the next rule
            for c in r.conditions:
                if c.op not in (ArgOp.EQ, ArgOp.MASKED_EQ):
                    raise ValueError(f"the guard tests equality only, not {c.op.value}")
                mask = c.mask if c.op is ArgOp.MASKED_EQ else 0xFFFFFFFFFFFFFFFF
                # seccomp_data.args[i] is 64 bits, loaded as two 32-bit words (little-endian).
                for half, offset in ((0, 16 + 8 * c.index), (32, 20 + 8 * c.index)):
                    m, v = (mask >> half) & 0xFFFFFFFF, (c.value >> half) & 0xFFFFFFFF
                    if m == 0:
                        continue  # nothing of this half is tested
                    out.append([ld, 0, 0, offset])
                    if m != 0xFFFFFFFF:
                        out.append([bpf.BPF_ALU | bpf.BPF_AND | bpf.BPF_K, 0, 0, m])
                    fails.append(len(out))
                    out.append([jeq, 0, 0, v])
            out.append([ret, 0, 0, value(r.action.kind, r.action.errno)])
            for at in fails:
                out[at][2] = len(out) - at - 1
                if out[at][2] > 255:
                    raise ValueError("a guard rule too long for a BPF jump")
        out.append([ret, 0, 0, fallback])
        out[skip][3] = len(out) - skip - 1
    out.append([ret, 0, 0, default])
    if len(out) > _MAX_INSNS:
        raise ValueError(f"a guard of {len(out)} instructions")
    return b"".join(_INSN.pack(*ins) for ins in out)

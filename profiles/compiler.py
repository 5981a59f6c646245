"""SeccompPolicy -> libseccomp filter -> raw BPF bytes (a pure function).

Runs in the parent before any fork, so a profile libseccomp cannot express
fails before a process exists. The bytes are a `struct sock_filter[]` for the
native arch, ready for seccomp(SECCOMP_SET_MODE_FILTER) or `bwrap --seccomp FD`.

Rule precedence for one call (the profile language's meaning, which the
compiled filter is checked against before it is returned):
  1. conditional rules with a non-allow action (exceptions: "ioctl, but not TIOCSTI")
  2. conditional allow rules
  3. the unconditional rule for the call, if any
  4. the default action.
libseccomp silently drops conditional rules for a call that also has an
unconditional one, so an unconditional rule that must coexist with
conditional ones is emitted with an always-true test (`argN >= 0`), which
libseccomp orders after the specific tests. `verify` proves the result on
witness arguments with our own BPF interpreter.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyseccomp

from warden.profiles import bpf, syscalls
from warden.profiles.errors import ProfileError
from warden.profiles.model import (
    Action,
    ActionKind,
    ArgCondition,
    ArgOp,
    SeccompPolicy,
    SyscallRule,
)

_U64 = 0xFFFFFFFFFFFFFFFF
_OPS = {ArgOp.EQ: pyseccomp.EQ, ArgOp.NE: pyseccomp.NE, ArgOp.LT: pyseccomp.LT,
        ArgOp.LE: pyseccomp.LE, ArgOp.GT: pyseccomp.GT, ArgOp.GE: pyseccomp.GE,
        ArgOp.MASKED_EQ: pyseccomp.MASKED_EQ}
_KILLS = (ActionKind.KILL_PROCESS, ActionKind.KILL_THREAD)
OPTIMIZE_BINARY_TREE = 2  # SCMP_FLTATR_CTL_OPTIMIZE value for the binary tree


def action_value(action: Action) -> int:
    """The SECCOMP_RET_* value of a model Action."""
    kind = action.kind
    if kind is ActionKind.ERRNO:
        if action.errno is None or not 0 <= action.errno <= 4095:
            raise ProfileError(f"errno action needs a number 0..4095, got {action.errno}")
        return int(pyseccomp.ERRNO(action.errno))
    values: dict[ActionKind, int] = {
        ActionKind.ALLOW: pyseccomp.ALLOW,
        ActionKind.KILL_PROCESS: pyseccomp.KILL_PROCESS,
        ActionKind.KILL_THREAD: pyseccomp.KILL_THREAD,
        ActionKind.TRAP: pyseccomp.TRAP,
        ActionKind.LOG: pyseccomp.LOG,
        ActionKind.NOTIFY: pyseccomp.NOTIFY,
    }
    return values[kind]


def effective(action: Action, kill_as_notify: bool) -> Action:
    """With kill_as_notify, kills become user-notify so the supervisor can watch them."""
    if kill_as_notify and action.kind in _KILLS:
        return Action(ActionKind.NOTIFY)
    return action


def condition_holds(cond: ArgCondition, value: int) -> bool:
    v = value & _U64
    if cond.op is ArgOp.MASKED_EQ:
        return (v & cond.mask) == cond.value
    return {
        ArgOp.EQ: v == cond.value, ArgOp.NE: v != cond.value, ArgOp.LT: v < cond.value,
        ArgOp.LE: v <= cond.value, ArgOp.GT: v > cond.value, ArgOp.GE: v >= cond.value,
    }[cond.op]


def rule_matches(rule: SyscallRule, args: Sequence[int]) -> bool:
    padded = [*args, *([0] * (6 - len(args)))]
    return all(condition_holds(c, padded[c.index]) for c in rule.conditions)


def deciding_rules(policy: SeccompPolicy, syscall: str, args: Sequence[int]) -> list[SyscallRule]:
    """The rules that decide this call under the precedence above ([] = default action)."""
    rules = [r for r in policy.rules if r.syscall == syscall]
    matching = [r for r in rules if r.conditions and rule_matches(r, args)]
    exceptions = [r for r in matching if r.action.kind is not ActionKind.ALLOW]
    if exceptions:
        return exceptions
    allows = [r for r in matching if r.action.kind is ActionKind.ALLOW]
    if allows:
        return allows
    uncond = [r for r in rules if not r.conditions]
    return uncond[-1:]


def intended(policy: SeccompPolicy, syscall: str, args: Sequence[int],
             kill_as_notify: bool = False) -> set[Action]:
    """What the profile means for this call (a set: overlapping exceptions may differ)."""
    rules = deciding_rules(policy, syscall, args)
    actions = {r.action for r in rules} if rules else {policy.default_action}
    return {effective(a, kill_as_notify) for a in actions}


@dataclass(frozen=True)
class _Emit:
    action: Action
    conditions: tuple[ArgCondition, ...]
    rule: SyscallRule


# libseccomp refuses a rule whose action equals the filter's default action,
# even when a broader rule for the same call makes it meaningful ("ioctl is
# allowed, but TIOCSTI kills" under a kill default). For those filters the
# default is built as this otherwise unused trace value and patched to the
# real default in the emitted code.
PLACEHOLDER_DEFAULT = int(pyseccomp.TRACE(0xFFF7))


def catchall_candidates(emits: Sequence[_Emit]) -> list[tuple[ArgCondition, ...]]:
    """Always-true tests to hang an unconditional rule on, most likely to work first.

    libseccomp builds one decision tree per call from the 32-bit halves of
    each test; some combinations collide (EEXIST) or order badly, so the
    compiler tries these in turn until one is accepted and verifies.
    """
    used = sorted({c.index for e in emits for c in e.conditions})
    unused = [i for i in range(6) if i not in used]
    out: list[tuple[ArgCondition, ...]] = []
    for index in [*used, *unused]:
        out.append((ArgCondition(index, ArgOp.GE, 0),))
        out.append((ArgCondition(index, ArgOp.LE, _U64),))
    return out


def _plan(policy: SeccompPolicy, kill_as_notify: bool, choice: dict[str, int]
          ) -> tuple[dict[str, list[_Emit]], bool, dict[str, int]]:
    """Per call, the libseccomp rules that implement the precedence; whether the
    default action must be stood in for by PLACEHOLDER_DEFAULT; and, per call
    that needs an always-true test, how many candidates there are."""
    default = effective(policy.default_action, kill_as_notify)
    by_call: dict[str, list[SyscallRule]] = {}
    for rule in policy.rules:
        if syscalls.number(rule.syscall) is None:
            continue
        by_call.setdefault(rule.syscall, []).append(rule)
    plan: dict[str, list[_Emit]] = {}
    options: dict[str, int] = {}
    placeholder = False
    for call, rules in by_call.items():
        cond = [r for r in rules if r.conditions]
        uncond = [r for r in rules if not r.conditions][-1:]
        fallback = effective(uncond[0].action, kill_as_notify) if uncond else default
        emits: list[_Emit] = []
        seen: dict[tuple[ArgCondition, ...], SyscallRule] = {}
        for r in cond:
            other = seen.setdefault(r.conditions, r)
            if other.action != r.action:
                raise _origin_error(r, f'conflicting rules for "{call}": {r.action} here, '
                                    f"{other.action} at {other.origin} for the same conditions")
            act = effective(r.action, kill_as_notify)
            if act == fallback:
                continue  # what would happen anyway
            placeholder = placeholder or act == default
            emits.append(_Emit(act, r.conditions, r))
        if uncond and fallback != default:
            if emits:
                candidates = catchall_candidates(emits)
                options[call] = len(candidates)
                always = candidates[min(choice.get(call, 0), len(candidates) - 1)]
                emits.append(_Emit(fallback, always, uncond[0]))
            else:
                emits.append(_Emit(fallback, (), uncond[0]))
        if emits:
            plan[call] = emits
    return plan, placeholder, options


def _origin_error(rule: SyscallRule, message: str) -> ProfileError:
    o = rule.origin
    if o is None:
        return ProfileError(message)
    return ProfileError(message, file=o.file, line=o.line, column=o.column)


class _Unexpressed(Exception):
    """libseccomp refused, or mis-ordered, the rules of one call."""

    def __init__(self, call: str, error: ProfileError) -> None:
        super().__init__(str(error))
        self.call = call
        self.error = error


def build_filter(policy: SeccompPolicy, *, kill_as_notify: bool = False,
                 foreign_as_notify: bool | None = None) -> pyseccomp.SyscallFilter:
    """The libseccomp filter object for a policy (native arch only).

    If the policy needs the default-action stand-in (see PLACEHOLDER_DEFAULT),
    the object's default is that stand-in; compile_policy and pfc_text patch it.
    """
    return _compile(policy, kill_as_notify, foreign_as_notify)[1]


def foreign_action(policy: SeccompPolicy, foreign_as_notify: bool) -> Action:
    """What a call from a foreign architecture gets: i386 (`int 0x80`) and x32 (nr with
    bit 30) on x86_64, the same native calls through another table.

    With foreign_as_notify (a filter whose listener the supervisor reads), a kill
    becomes user-notify like any other kill: the supervisor reads the call's arch
    and number from the kernel and kills the sandbox, so it is reported as a
    seccomp violation with its i386 or x32 name instead of a bare SIGSYS."""
    bad_arch = policy.bad_arch_action
    if bad_arch.kind in (ActionKind.ALLOW, ActionKind.LOG, ActionKind.NOTIFY):
        raise ProfileError(f"foreign architectures must be refused, not {bad_arch}")
    return effective(bad_arch, foreign_as_notify)


def _build(policy: SeccompPolicy, kill_as_notify: bool, foreign_as_notify: bool,
           choice: dict[str, int]) -> tuple[pyseccomp.SyscallFilter, bool, dict[str, int]]:
    default = effective(policy.default_action, kill_as_notify)
    bad_arch = foreign_action(policy, foreign_as_notify)
    plan, placeholder, options = _plan(policy, kill_as_notify, choice)
    filt = pyseccomp.SyscallFilter(PLACEHOLDER_DEFAULT if placeholder else action_value(default))
    filt.set_attr(pyseccomp.Attr.ACT_BADARCH, action_value(bad_arch))
    # The sandbox sets no_new_privs itself, in its fixed place in the setup order.
    filt.set_attr(pyseccomp.Attr.CTL_NNP, 0)
    if optimizer_supported():
        filt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, OPTIMIZE_BINARY_TREE)
    for call, emits in plan.items():
        for e in emits:
            args = [pyseccomp.Arg(c.index, _OPS[c.op], c.mask if c.op is ArgOp.MASKED_EQ else
                                  c.value, c.value if c.op is ArgOp.MASKED_EQ else 0)
                    for c in e.conditions]
            try:
                filt.add_rule_exactly(action_value(e.action), call, *args)
            except OSError as err:
                raise _Unexpressed(call, _origin_error(
                    e.rule, f'libseccomp rejected the rules for "{call}": {err.strerror}')
                ) from None
    return filt, placeholder, options


def _compile(policy: SeccompPolicy, kill_as_notify: bool, foreign_as_notify: bool | None = None
             ) -> tuple[bytes, pyseccomp.SyscallFilter, dict[str, int]]:
    """Build, export, patch and verify, trying other always-true tests on trouble."""
    foreign = kill_as_notify if foreign_as_notify is None else foreign_as_notify
    choice: dict[str, int] = {}
    while True:
        try:
            filt, placeholder, options = _build(policy, kill_as_notify, foreign, choice)
            code = _export(filt, pfc=False)
            if placeholder:
                real = action_value(effective(policy.default_action, kill_as_notify))
                code = b"".join(
                    struct.pack("=HBBI", c, jt, jf,
                                real if (c == _RET_K and k == PLACEHOLDER_DEFAULT) else k)
                    for c, jt, jf, k in struct.iter_unpack("=HBBI", code))
            _verify(policy, code, kill_as_notify, foreign)
            return code, filt, choice
        except _Unexpressed as trouble:
            _, _, options = _plan(policy, kill_as_notify, choice)
            tried = choice.get(trouble.call, 0)
            if tried + 1 >= options.get(trouble.call, 0):
                raise trouble.error from None
            choice[trouble.call] = tried + 1


@functools.cache
def optimizer_supported() -> bool:
    """libseccomp >= 2.5 has SCMP_FLTATR_CTL_OPTIMIZE; older ones refuse the attribute."""
    probe = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    try:
        probe.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, OPTIMIZE_BINARY_TREE)
    except OSError:
        return False
    return True


def export_bpf(filt: pyseccomp.SyscallFilter) -> bytes:
    """libseccomp's BPF for a filter object as it stands (no patching, no checks)."""
    return _export(filt, pfc=False)


def _export(filt: pyseccomp.SyscallFilter, pfc: bool) -> bytes:
    fd = os.memfd_create("warden-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as f:
            (filt.export_pfc if pfc else filt.export_bpf)(f)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def compile_policy(policy: SeccompPolicy, *, kill_as_notify: bool = False,
                   foreign_as_notify: bool | None = None) -> bytes:
    """The policy as raw BPF for the native arch, checked against its own meaning.

    kill_as_notify: kill actions become user-notify, for a filter whose listener
    the supervisor reads. foreign_as_notify (default: the same as kill_as_notify):
    so does the foreign-architecture action (see foreign_action)."""
    return _compile(policy, kill_as_notify, foreign_as_notify)[0]


_RET_K = bpf.BPF_RET | bpf.BPF_K


def pfc_text(policy: SeccompPolicy, *, kill_as_notify: bool = False) -> str:
    """libseccomp's pseudo-filter-code listing of the same filter."""
    _, filt, _ = _compile(policy, kill_as_notify)
    text = _export(filt, pfc=True).decode()
    real = effective(policy.default_action, kill_as_notify)
    spelled = _PFC[real.kind] + (f"({real.errno})" if real.kind is ActionKind.ERRNO else "")
    return text.replace(f"action TRACE({PLACEHOLDER_DEFAULT & 0xFFFF})", f"action {spelled}")


_PFC = {ActionKind.ALLOW: "ALLOW", ActionKind.KILL_PROCESS: "KILL_PROCESS",
        ActionKind.KILL_THREAD: "KILL", ActionKind.ERRNO: "ERRNO", ActionKind.TRAP: "TRAP",
        ActionKind.LOG: "LOG", ActionKind.NOTIFY: "NOTIFY"}


def instruction_count(code: bytes) -> int:
    return bpf.instruction_count(code)


PROBE_LIMIT = 4096  # argument vectors tried per call before sampling


def interesting_values(c: ArgCondition) -> set[int]:
    """Values on and around a test's boundary, in both 32-bit halves."""
    v = c.value
    out = {v, (v + 1) & _U64, (v - 1) & _U64, v ^ (1 << 32), v | 0xFFFFFFFF00000000,
           v & 0xFFFFFFFF}
    if c.op is ArgOp.MASKED_EQ:
        low = c.mask & -c.mask
        out |= {v ^ low, v | (~c.mask & _U64), v ^ c.mask, c.mask}
    return out


def probes(rules: Sequence[SyscallRule]) -> Iterator[list[int]]:
    """Argument vectors that exercise every boundary of every rule for one call.

    The cross product of each tested argument's interesting values (capped at
    PROBE_LIMIT, beyond which a fixed-seed sample is added to each rule's own
    witnesses), so a tree libseccomp merged wrongly shows up.
    """
    per_index: dict[int, set[int]] = {}
    for r in rules:
        for c in r.conditions:
            per_index.setdefault(c.index, {0, _U64}).update(interesting_values(c))
    indexes = sorted(per_index)
    choices = [sorted(per_index[i]) for i in indexes]
    total = 1
    for ch in choices:
        total *= len(ch)

    def vector(values: Sequence[int]) -> list[int]:
        out = [0] * 6
        for i, v in zip(indexes, values, strict=True):
            out[i] = v
        return out

    if total <= PROBE_LIMIT:
        for combo in itertools.product(*choices):
            yield vector(combo)
        return
    rng = random.Random(0x5EC)
    for r in rules:
        yield from witnesses(r)
    for _ in range(PROBE_LIMIT):
        yield vector([rng.choice(ch) for ch in choices])


def witnesses(rule: SyscallRule) -> Iterator[list[int]]:
    """Arguments that satisfy the rule, then ones that move each test to its edges."""
    base = [0] * 6
    for c in rule.conditions:
        base[c.index] = _satisfy(c)
    yield base
    for c in rule.conditions:
        for v in sorted(interesting_values(c)):
            alt = list(base)
            alt[c.index] = v
            yield alt


def _satisfy(c: ArgCondition) -> int:
    if c.op is ArgOp.MASKED_EQ:
        return c.value
    return {ArgOp.EQ: c.value, ArgOp.NE: c.value ^ 1, ArgOp.LT: max(c.value - 1, 0),
            ArgOp.LE: c.value, ArgOp.GT: min(c.value + 1, _U64), ArgOp.GE: c.value}[c.op]


def verify(policy: SeccompPolicy, code: bytes, *, kill_as_notify: bool = False,
           foreign_as_notify: bool | None = None) -> None:
    """Raise ProfileError if the BPF disagrees with the profile's meaning on any witness."""
    try:
        _verify(policy, code, kill_as_notify,
                kill_as_notify if foreign_as_notify is None else foreign_as_notify)
    except _Unexpressed as e:
        raise e.error from None


def _verify(policy: SeccompPolicy, code: bytes, kill_as_notify: bool,
            foreign_as_notify: bool) -> None:
    insns = bpf.decode(code)
    by_call: dict[str, list[SyscallRule]] = {}
    for r in policy.rules:
        by_call.setdefault(r.syscall, []).append(r)
    _verify_foreign(policy, insns, by_call, foreign_as_notify)
    for call, rules in by_call.items():
        nr = syscalls.number(call)
        if nr is None:
            continue
        for args in probes(rules):
            got = bpf.action_of(bpf.run(insns, bpf.seccomp_data(nr, args)))
            want = intended(policy, call, args, kill_as_notify)
            if got not in want:
                shown = ", ".join(f"{a:#x}" for a in args)
                raise _Unexpressed(call, _origin_error(
                    rules[-1], f'compiled filter gives {got} for {call}({shown}) but the profile '
                    f"means {' or '.join(sorted(map(str, want)))} (libseccomp does not order "
                    "overlapping tests on one argument by action; make the conditions disjoint)"))


# Native numbers tried through the foreign tables besides the profile's own calls:
# read, write, open, getpid, execve, and the tables' last entries.
_FOREIGN_PROBES = (0, 1, 2, 11, 20, 39, 59, 0x3FF, 0x3FFFFFFF)


def _verify_foreign(policy: SeccompPolicy, insns: Sequence[bpf.Insn],
                    by_call: dict[str, list[SyscallRule]], foreign_as_notify: bool) -> None:
    """Every i386 call and every x32 call (nr | X32_SYSCALL_BIT) must get the foreign action,
    whatever the native rule for the same number says."""
    want = foreign_action(policy, foreign_as_notify)
    nrs = set(_FOREIGN_PROBES)
    nrs.update(n for n in map(syscalls.number, by_call) if n is not None)
    for nr in sorted(nrs):
        for arch, number, table in ((bpf.AUDIT_ARCH_I386, nr, "i386"),
                                    (bpf.AUDIT_ARCH_X86_64, nr | syscalls.X32_SYSCALL_BIT, "x32")):
            got = bpf.action_of(bpf.run(insns, bpf.seccomp_data(number, arch=arch)))
            if got != want:
                raise ProfileError(f"compiled filter gives {got} for call {number:#x} of the "
                                   f"{table} table but foreign architectures must get {want}")

"""The compiler: BPF judged in-process by our interpreter, and the same cases in
real forked children that load the bytes with seccomp(2)."""

from __future__ import annotations

import errno
import signal
import struct

import pyseccomp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.profiles.profiles_child import records, try_syscalls
from warden.profiles import ProfileError, bpf, compiler, load_profile, syscalls
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

NR = {n: syscalls.number(n) for n in ("read", "getppid", "getpid", "socket", "ioctl", "clone",
                                      "clone3", "mount", "setuid", "unshare", "uname")}


def errno_action(n: int) -> Action:
    return Action(ActionKind.ERRNO, n)


def sample_policy() -> SeccompPolicy:
    return SeccompPolicy(
        default_action=KILL_PROCESS,
        rules=(
            SyscallRule("exit_group", ALLOW),
            SyscallRule("getppid", ALLOW),
            SyscallRule("getpid", ALLOW),
            SyscallRule("mount", errno_action(errno.EPERM)),
            SyscallRule("clone3", errno_action(errno.ENOSYS)),
            SyscallRule("socket", errno_action(errno.EPERM)),
            SyscallRule("socket", ALLOW, (ArgCondition(0, ArgOp.EQ, 1),)),
            SyscallRule("ioctl", ALLOW),
            SyscallRule("ioctl", errno_action(errno.EPERM),
                        (ArgCondition(1, ArgOp.MASKED_EQ, 0x5412, 0xFFFFFFFF),)),
            SyscallRule("unshare", errno_action(errno.EINVAL),
                        (ArgCondition(0, ArgOp.GT, 0xFFFF),)),
        ),
    )


CASES = [
    ("getppid", (), "allow"),
    ("mount", (), "errno EPERM"),
    ("clone3", (), "errno ENOSYS"),
    ("socket", (1, 1, 0), "allow"),
    ("socket", (2, 1, 0), "errno EPERM"),
    ("socket", (1 | 1 << 32, 1, 0), "errno EPERM"),  # 64-bit compare: fails closed
    ("ioctl", (0, 0x5412), "errno EPERM"),
    ("ioctl", (0, 0x1_0000_5412), "errno EPERM"),  # upper half ignored by the kernel too
    ("ioctl", (0, 0x5413), "allow"),
    ("unshare", (0x10000,), "errno EINVAL"),
    ("unshare", (0x100,), "kill-process"),
    ("setuid", (0,), "kill-process"),
]


@pytest.mark.parametrize(("call", "args", "want"), CASES)
def test_in_process(call: str, args: tuple[int, ...], want: str) -> None:
    code = compiler.compile_policy(sample_policy())
    assert bpf.describe(bpf.evaluate(code, NR[call], args)) == want


def test_same_cases_in_a_forked_child() -> None:
    """Errno answers come back from the kernel; allowed calls really run."""
    code = compiler.compile_policy(sample_policy())
    safe = [(c, a, w) for c, a, w in CASES if (w != "kill-process" and c != "ioctl") or
            (c == "ioctl" and w != "allow")]
    result = try_syscalls(code, [(NR[c], a) for c, a, _ in safe])
    assert result.exit_code == 0, result.status
    got = records(result)
    assert len(got) == len(safe)
    for (call, args, want), (ret, err) in zip(safe, got, strict=True):
        if want == "allow":
            assert ret >= 0, (call, args, err)
        else:
            assert (ret, errno.errorcode[err]) == (-1, want.split()[1]), (call, args)


@pytest.mark.parametrize("call", ["unshare", "setuid"])
def test_killed_in_a_forked_child(call: str) -> None:
    code = compiler.compile_policy(sample_policy())
    args = (0x100,) if call == "unshare" else (0,)
    result = try_syscalls(code, [(NR["getppid"], ()), (NR[call], args), (NR["getppid"], ())])
    assert result.signal == signal.SIGSYS
    assert len(records(result)) == 1  # the call after the kill never happened


@pytest.mark.parametrize("name", ["default", "strict", "python-worker", "network-client"])
def test_foreign_architectures_are_killed(name: str) -> None:
    policy = load_profile(name).seccomp
    code = compiler.compile_policy(policy)
    for nr in (0, 1, 39, 110):  # read, write, getpid, getppid: allowed natively
        assert bpf.describe(bpf.evaluate(code, nr)) == "allow" or nr == 110
        assert bpf.describe(bpf.evaluate(code, nr | syscalls.X32_SYSCALL_BIT)) == "kill-process"
        assert bpf.describe(bpf.evaluate(code, nr, arch=bpf.AUDIT_ARCH_I386)) == "kill-process"
    # A filter whose listener the supervisor reads reports foreign calls like any kill:
    # user-notify, so the supervisor sees the arch and number and kills the sandbox.
    notify = compiler.compile_policy(policy, kill_as_notify=True)
    for nr in (0, 1, 20, 39, 110):
        assert bpf.describe(bpf.evaluate(notify, nr | syscalls.X32_SYSCALL_BIT)) == "user-notify"
        assert bpf.describe(bpf.evaluate(notify, nr, arch=bpf.AUDIT_ARCH_I386)) == "user-notify"
    # ... unless asked otherwise (a filter stacked under one that holds the listener)
    plain = compiler.compile_policy(policy, kill_as_notify=True, foreign_as_notify=False)
    assert bpf.describe(bpf.evaluate(plain, 39 | syscalls.X32_SYSCALL_BIT)) == "kill-process"
    assert bpf.describe(bpf.evaluate(plain, 20, arch=bpf.AUDIT_ARCH_I386)) == "kill-process"
    stacked = compiler.compile_policy(policy, kill_as_notify=False, foreign_as_notify=True)
    assert bpf.describe(bpf.evaluate(stacked, 20, arch=bpf.AUDIT_ARCH_I386)) == "user-notify"


def test_foreign_action_is_verified_on_every_compile() -> None:
    """The compiler's own check runs every i386 and x32 number a profile names (and a
    few more) through the compiled bytes: a filter whose arch check was lost is refused."""
    policy = sample_policy()
    code = compiler.compile_policy(policy, kill_as_notify=True)
    compiler.verify(policy, code, kill_as_notify=True)
    # Drop the arch check: the first instructions load the arch and jump on it.
    insns = bpf.decode(code)
    assert insns[0].k == 4 and insns[1].k == bpf.AUDIT_ARCH_X86_64
    nop = struct.pack("=HBBI", bpf.BPF_JMP | bpf.BPF_JA, 0, 0, 0)
    unchecked = code[:8] + nop + code[16:]
    with pytest.raises(ProfileError, match="i386 table but foreign architectures must get "
                                           "user-notify"):
        compiler.verify(policy, unchecked, kill_as_notify=True)
    # And with the foreign action left at kill while the listener would report it:
    killing = compiler.compile_policy(policy, kill_as_notify=True, foreign_as_notify=False)
    with pytest.raises(ProfileError, match="foreign architectures must get user-notify"):
        compiler.verify(policy, killing, kill_as_notify=True)


def test_x32_call_is_killed_by_the_kernel() -> None:
    """getpid through the x32 ABI (nr | 0x40000000) from a real child."""
    code = compiler.compile_policy(load_profile("default").seccomp)
    result = try_syscalls(code, [(NR["getpid"], ()), (NR["getpid"] | 0x40000000, ())])
    assert result.signal == signal.SIGSYS
    assert len(records(result)) == 1


def test_kill_as_notify_turns_kills_into_user_notify() -> None:
    policy = sample_policy()
    code = compiler.compile_policy(policy, kill_as_notify=True)
    assert bpf.describe(bpf.evaluate(code, NR["setuid"])) == "user-notify"
    assert bpf.describe(bpf.evaluate(code, NR["unshare"], [0x100])) == "user-notify"
    assert bpf.describe(bpf.evaluate(code, NR["mount"])) == "errno EPERM"
    # Without a listener the kernel answers a notify action with ENOSYS: the
    # filter is accepted and the child lives to tell.
    result = try_syscalls(code, [(NR["setuid"], (0,)), (NR["getppid"], ())])
    assert result.exit_code == 0
    (ret, err), (ppid, _) = records(result)
    assert (ret, err) == (-1, errno.ENOSYS) and ppid > 0


def test_rule_with_the_default_action_under_a_broader_rule() -> None:
    """libseccomp refuses such a rule; the compiler stands in for the default and patches it."""
    policy = SeccompPolicy(rules=(
        SyscallRule("ioctl", ALLOW),
        SyscallRule("ioctl", KILL_PROCESS, (ArgCondition(1, ArgOp.EQ, 0x5412),)),
        SyscallRule("getppid", ALLOW),
        SyscallRule("exit_group", ALLOW),
    ))
    code = compiler.compile_policy(policy)
    assert bpf.describe(bpf.evaluate(code, NR["ioctl"], [0, 0x5412])) == "kill-process"
    assert bpf.describe(bpf.evaluate(code, NR["ioctl"], [0, 0x5413])) == "allow"
    assert bpf.describe(bpf.evaluate(code, NR["setuid"])) == "kill-process"
    rets = {ins.k for ins in bpf.decode(code) if ins.code == bpf.BPF_RET | bpf.BPF_K}
    assert compiler.PLACEHOLDER_DEFAULT not in rets
    assert "TRACE" not in compiler.pfc_text(policy)
    result = try_syscalls(code, [(NR["ioctl"], (0, 0x5413)), (NR["ioctl"], (0, 0x5412))])
    assert result.signal == signal.SIGSYS and len(records(result)) == 1


def test_overlapping_tests_libseccomp_cannot_order_are_refused() -> None:
    policy = SeccompPolicy(rules=(
        SyscallRule("clone", errno_action(errno.EPERM)),
        SyscallRule("clone", ALLOW, (ArgCondition(0, ArgOp.MASKED_EQ, 0x10100, 0x10100),)),
        SyscallRule("clone", errno_action(errno.EPERM),
                    (ArgCondition(0, ArgOp.MASKED_EQ, 0x10000000, 0x10000000),)),
    ))
    with pytest.raises(ProfileError) as info:
        compiler.compile_policy(policy)
    assert info.value.message.startswith("compiled filter gives ")
    assert " for clone(" in info.value.message
    assert "make the conditions disjoint" in info.value.message


def test_binary_tree_optimisation_is_on() -> None:
    assert compiler.optimizer_supported()
    filt = compiler.build_filter(load_profile("default").seccomp)
    assert filt.get_attr(pyseccomp.Attr.CTL_OPTIMIZE) == compiler.OPTIMIZE_BINARY_TREE
    assert filt.get_attr(pyseccomp.Attr.ACT_BADARCH) == pyseccomp.KILL_PROCESS


def test_pfc_and_instruction_count() -> None:
    policy = load_profile("strict").seccomp
    code = compiler.compile_policy(policy)
    assert compiler.instruction_count(code) == len(code) // 8 > 10
    text = compiler.pfc_text(policy)
    assert 'filter for syscall "read"' in text and "action KILL_PROCESS;" in text


def test_compile_is_pure() -> None:
    policy = load_profile("default").seccomp
    assert compiler.compile_policy(policy) == compiler.compile_policy(policy)


# ---- random policies: interpreter, intended meaning and kernel agree --------------

CALLS = ["getppid", "getpid", "uname", "socket", "ioctl"]
ops = st.sampled_from(list(ArgOp))
values = st.sampled_from([0, 1, 2, 5, 0x5412, 0xFFFFFFFF, 1 << 32, (1 << 64) - 1])


@st.composite
def conditions(draw: st.DrawFn) -> tuple[ArgCondition, ...]:
    indexes = draw(st.lists(st.integers(0, 2), max_size=2, unique=True))
    out = []
    for i in sorted(indexes):
        op = draw(ops)
        v = draw(values)
        if op is ArgOp.MASKED_EQ:
            mask = draw(values) | 1
            out.append(ArgCondition(i, op, v & mask, mask))
        else:
            out.append(ArgCondition(i, op, v))
    return tuple(out)


MARK_LOW, MARK_DEFAULT = 200, 399  # errno values no real call returns: the filter's answers


@st.composite
def actions(draw: st.DrawFn) -> Action:
    if draw(st.integers(0, 3)) == 0:
        return ALLOW
    return errno_action(draw(st.integers(MARK_LOW, MARK_DEFAULT - 1)))


@st.composite
def policies(draw: st.DrawFn) -> SeccompPolicy:
    rules = []
    for call in draw(st.lists(st.sampled_from(CALLS), min_size=1, max_size=4, unique=True)):
        if draw(st.booleans()):
            rules.append(SyscallRule(call, draw(actions())))
        for _ in range(draw(st.integers(0, 2))):
            rules.append(SyscallRule(call, draw(actions()), draw(conditions())))
    rules.append(SyscallRule("exit_group", ALLOW))
    return SeccompPolicy(default_action=errno_action(MARK_DEFAULT), rules=tuple(rules))


args_st = st.lists(values, min_size=3, max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.lists(st.tuples(st.sampled_from(CALLS), args_st), min_size=1, max_size=8))
def test_random_policies_interpreter_matches_kernel(policy: SeccompPolicy,
                                                    calls: list[tuple[str, list[int]]]) -> None:
    """The filter's answers are errno values no real call returns (200..399), and the
    allowed calls here are harmless (getppid, getpid, uname, socket, ioctl with junk
    arguments), so the kernel itself can be asked and compared with the interpreter."""
    try:
        code = compiler.compile_policy(policy)
    except ProfileError as e:
        # Refusing is allowed only for the reasons the compiler documents.
        assert ("make the conditions disjoint" in e.message or "conflicting rules" in e.message
                or "libseccomp rejected the rules" in e.message), e.message
        return
    predicted = []
    for call, args in calls:
        ret = bpf.evaluate(code, NR[call], args)
        assert bpf.action_of(ret) in compiler.intended(policy, call, args)
        predicted.append(None if bpf.action_of(ret) == ALLOW else ret & bpf.SECCOMP_RET_DATA)
    result = try_syscalls(code, [(NR[c], a) for c, a in calls])
    assert result.exit_code == 0
    for want, (ret, err) in zip(predicted, records(result), strict=True):
        if want is None:
            assert not MARK_LOW <= err <= MARK_DEFAULT  # reached the kernel
        else:
            assert (ret, err) == (-1, want)


def test_interpreter_arithmetic_and_scratch_memory() -> None:
    def ins(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("=HBBI", code, jt, jf, k)

    ld_abs = bpf.BPF_LD | bpf.BPF_W | bpf.BPF_ABS
    prog = b"".join([
        ins(ld_abs, 16),                                    # A = args[0].lo
        ins(bpf.BPF_ALU | bpf.BPF_ADD | bpf.BPF_K, 3),      # A += 3
        ins(bpf.BPF_ST, 2),                                 # M[2] = A
        ins(bpf.BPF_LDX | bpf.BPF_W | bpf.BPF_IMM, 4),      # X = 4
        ins(bpf.BPF_ALU | bpf.BPF_MUL | bpf.BPF_X),         # A *= X
        ins(bpf.BPF_ALU | bpf.BPF_RSH | bpf.BPF_K, 1),      # A >>= 1
        ins(bpf.BPF_MISC | bpf.BPF_TAX),                    # X = A
        ins(bpf.BPF_LD | bpf.BPF_MEM, 2),                   # A = M[2]
        ins(bpf.BPF_ALU | bpf.BPF_SUB | bpf.BPF_X),         # A -= X
        ins(bpf.BPF_ALU | bpf.BPF_NEG),                     # A = -A
        ins(bpf.BPF_JMP | bpf.BPF_JSET | bpf.BPF_K, 0x80000000, 1, 0),
        ins(bpf.BPF_ALU | bpf.BPF_OR | bpf.BPF_K, bpf.SECCOMP_RET_ERRNO),
        ins(bpf.BPF_RET | bpf.BPF_A),
    ])
    # args[0] = 5: A = 8; M2 = 8; A = 32 >> 1 = 16; X = 16; A = 8 - 16 = -8; A = 8
    assert bpf.evaluate(prog, 0, [5]) == bpf.SECCOMP_RET_ERRNO | 8
    with pytest.raises(bpf.BpfError, match="fell off the end"):
        bpf.evaluate(ins(ld_abs, 0), 0)
    with pytest.raises(bpf.BpfError, match="aligned 32-bit words"):
        bpf.evaluate(ins(ld_abs, 2) + ins(bpf.BPF_RET, 0), 0)
    with pytest.raises(bpf.BpfError, match="multiple of 8"):
        bpf.evaluate(b"\0" * 7, 0)
    assert bpf.describe(bpf.SECCOMP_RET_ERRNO | errno.EACCES) == "errno EACCES"
    assert bpf.describe(bpf.SECCOMP_RET_KILL_THREAD) == "kill-thread"
    assert bpf.describe(0x12345678) == "kill-process"  # unknown actions kill, as in the kernel

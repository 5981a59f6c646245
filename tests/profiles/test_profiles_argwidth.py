"""Tests on arguments the kernel reads as 32 (or 16) bits must mask the rest.

The premise is proved on the real kernel first: a filter that compares all 64
bits of kill's `int sig` lets `kill(self, 0 | 1 << 32)` through, and the kernel
runs it as kill(self, 0). Then the loader refuses every such test, with the
masked form to write, and accepts the masked one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.profiles.profiles_child import records, try_syscalls
from warden.profiles import (
    ProfileError,
    argwidth,
    compiler,
    inspect,
    load_profile,
    load_text,
    syscalls,
)
from warden.profiles.cli import profile_group
from warden.profiles.constants import CONSTANTS
from warden.profiles.model import (
    KILL_PROCESS,
    Action,
    ActionKind,
    ArgCondition,
    ArgOp,
    SeccompPolicy,
    SyscallRule,
)

EPERM = Action(ActionKind.ERRNO, 1)
ROOT = Path(__file__).resolve().parents[2]
KILL = syscalls.number("kill") or 0


def _basics() -> tuple[SyscallRule, ...]:
    allow = Action(ActionKind.ALLOW)
    return tuple(SyscallRule(n, allow) for n in ("exit_group", "exit", "getpid", "kill"))


def test_the_kernel_reads_only_the_low_32_bits_of_an_int() -> None:
    """kill(getpid(), 1 << 32): an unmasked `arg1 == 0` misses it, the kernel sends 0."""
    unmasked = SeccompPolicy(KILL_PROCESS, (
        SyscallRule("kill", EPERM, (ArgCondition(1, ArgOp.EQ, 0),)), *_basics()))
    masked = SeccompPolicy(KILL_PROCESS, (
        SyscallRule("kill", EPERM, (ArgCondition(1, ArgOp.MASKED_EQ, 0, 0xFFFFFFFF),)),
        *_basics()))
    calls = [(KILL, (0, 0)), (KILL, (0, 1 << 32))]  # pid 0: the child's own process group
    got = records(try_syscalls(compiler.compile_policy(unmasked), calls))
    assert got == [(-1, 1), (0, 0)]  # refused, then sent as signal 0 by the kernel
    got = records(try_syscalls(compiler.compile_policy(masked), calls))
    assert got == [(-1, 1), (-1, 1)]


RULE = 'extends = "default"\n\n[[seccomp.rules]]\nsyscall = "{call}"\naction = "{action}"\n' \
       'args = [{args}]\n'


def profile_text(call: str, args: str, action: str = "errno EPERM") -> str:
    return RULE.format(call=call, action=action, args=args)


@pytest.mark.parametrize(("call", "cond", "fix"), [
    ("ioctl", "arg1 == TIOCSTI", "arg1 & 0xffffffff == TIOCSTI"),
    ("socket", "arg0 == AF_INET", "arg0 & 0xffffffff == AF_INET"),
    ("socket", "arg1 == SOCK_RAW", "arg1 & 0xffffffff == SOCK_RAW"),
    ("fcntl", "arg1 == 1", "arg1 & 0xffffffff == 1"),
    ("prctl", "arg0 == 22", "arg0 & 0xffffffff == 22"),
    ("personality", "arg0 == 0x8", "arg0 & 0xffffffff == 0x8"),
    ("kill", "arg1 == 9", "arg1 & 0xffffffff == 9"),
    ("setuid", "arg0 == 0", "arg0 & 0xffffffff == 0"),
    ("setsockopt", "arg2 == 1", "arg2 & 0xffffffff == 1"),
    ("clone", "arg0 == 0x10000000", "arg0 & 0xffffffff == 0x10000000"),
    ("openat", "arg3 == 0o777", "arg3 & 0xffff == 0o777"),
    ("ioctl", "arg1 == 0x1234500000000", "arg1 & 0xffffffff == 0x0"),
])
def test_an_unmasked_test_is_an_error_with_the_masked_form(tmp_path: Path, call: str, cond: str,
                                                          fix: str) -> None:
    f = tmp_path / "mine.toml"
    f.write_text(profile_text(call, f'"{cond}"'))
    with pytest.raises(ProfileError) as info:
        load_profile(str(f))
    e = info.value
    assert (e.file, e.line, e.column) == (str(f), 6, 10)  # the "arg..." inside the quotes
    assert f'write "{fix}"' in e.message
    assert "bits wide in the kernel" in e.message and "64-bit register" in e.message
    assert str(e).splitlines()[1:] == [f'    args = ["{cond}"]', "             ^"]
    masked = tmp_path / "masked.toml"
    masked.write_text(profile_text(call, f'"{fix}"'))
    rules = [r for r in load_profile(str(masked)).seccomp.rules
             if r.syscall == call and r.action == EPERM and r.conditions]
    assert ArgOp.MASKED_EQ in [c.op for r in rules for c in r.conditions]


@pytest.mark.parametrize("cond", ["arg0 != AF_UNIX", "arg0 < 38", "arg0 >= 40", "arg0 <= 1",
                                  "arg0 > 40"])
def test_an_order_test_on_a_32_bit_argument_is_an_error(cond: str) -> None:
    with pytest.raises(ProfileError) as info:
        load_text(profile_text("socket", f'"{cond}"', action="allow"), file="x.toml")
    assert f'"{cond}" can be dodged with the bits above bit 31' in info.value.message
    assert '"arg0 & 0xffffffff == VALUE"' in info.value.message
    assert (info.value.line, info.value.column) == (6, 10)


@pytest.mark.parametrize("cond", ["arg1 & 0x1ffffffff == TIOCSTI", "arg1 has-any 0x100000000"])
def test_a_mask_reaching_above_the_width_is_an_error(cond: str) -> None:
    with pytest.raises(ProfileError) as info:
        load_text(profile_text("ioctl", f'"{cond}"'), file="x.toml")
    assert "tests bits above bit 31, which the kernel ignores" in info.value.message


def test_the_error_points_at_the_right_condition_of_several(tmp_path: Path) -> None:
    f = tmp_path / "two.toml"
    f.write_text('[[seccomp.rules]]\nsyscall = ["read", "write"]\naction = "allow"\n'
                 'args = ["arg2 < 100", "arg0 == 1"]\n')
    with pytest.raises(ProfileError) as info:
        load_profile(str(f))
    assert (info.value.line, info.value.column) == (4, 24)
    assert "read's arg0 (unsigned int)" in info.value.message


@pytest.mark.parametrize(("call", "cond"), [
    ("unshare", "arg0 == CLONE_NEWUSER"),        # unsigned long: all 64 bits matter
    ("mmap", "arg2 == 7"),                        # prot is an unsigned long on x86_64
    ("ioctl", "arg2 == 0"),                       # the ioctl argument itself
    ("clone", "arg0 has-any CLONE_NEWUSER"),      # masked within 32 bits
    ("ioctl", "arg1 & U32_MAX == TIOCSTI"),
    ("socket", "arg1 has-all SOCK_CLOEXEC"),
    ("openat", "arg3 & 0o7777 == 0o644"),
])
def test_tests_the_kernel_sees_whole_are_accepted(call: str, cond: str) -> None:
    prof = load_text(profile_text(call, f'"{cond}"'), file="x.toml")
    assert any(r.syscall == call and r.conditions for r in prof.seccomp.rules)


@pytest.mark.parametrize("name", ["default", "strict", "network-client", "python-worker",
                                  str(ROOT / "supervisor" / "zygote.toml")])
def test_every_builtin_passes(name: str) -> None:
    prof = load_profile(name)
    for r in prof.seccomp.rules:
        for c in r.conditions:
            assert argwidth.covers_only_read_bits(r.syscall, c), (r, c)


def test_warden_profile_check_reports_it(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    Path("bad.toml").write_text(profile_text("ioctl", '"arg1 == TIOCSTI"'))
    Path("good.toml").write_text(profile_text("ioctl", '"arg1 & U32_MAX == TIOCSTI"'))
    r = runner.invoke(profile_group, ["check", "bad.toml", "good.toml"])
    assert r.exit_code == 1
    assert "bad.toml:6:10: error: ioctl's arg1 (unsigned int) is 32 bits wide" in r.output
    assert 'write "arg1 & 0xffffffff == TIOCSTI"' in r.output
    assert re.search(r"^good\.toml: ok", r.output, re.M)
    r = runner.invoke(profile_group, ["check", "--json", "bad.toml"])
    data = json.loads(r.output)
    assert (data[0]["ok"], data[0]["line"], data[0]["column"]) == (False, 6, 10)
    # explain refuses the profile rather than answering "allow" for TIOCSTI|1<<32
    r = runner.invoke(profile_group, ["explain", "bad.toml", "ioctl", "0",
                                      "TIOCSTI|0x100000000"])
    assert r.exit_code == 1 and "32 bits wide" in r.output


def test_explain_names_the_bits_the_kernel_ignores() -> None:
    data = inspect.explain(load_profile("default"), "ioctl", ["0", "TIOCSTI|0x100000000"])
    assert data["result"] == "errno EPERM"
    assert data["notes"] == ["ioctl's arg1 (unsigned int) is 32 bits wide: the kernel acts on "
                             "0x5412, the filter sees 0x100005412"]


def test_explain_says_when_the_filter_and_the_kernel_disagree() -> None:
    """A policy built without the loader (so unchecked) still gets an honest explain."""
    from warden.profiles.model import Profile

    pol = SeccompPolicy(Action(ActionKind.ALLOW), (
        SyscallRule("ioctl", EPERM, (ArgCondition(1, ArgOp.EQ, CONSTANTS["TIOCSTI"]),)),))
    raw = Profile(name="raw", source="<test>", seccomp=pol)
    data = inspect.explain(raw, "ioctl", ["0", "0x100005412"])
    assert data["result"] == "allow"
    assert data["notes"][-1] == ("the filter answers errno EPERM for ioctl with 0x0, 0x5412: "
                                 "profile raw tests bits the kernel ignores, so the two differ")


def test_the_table_matches_the_native_syscalls() -> None:
    native = syscalls.native_names()
    for name, proto in argwidth.PROTOTYPES.items():
        assert name in native, name
        types = [t.strip() for t in proto.split(",")]
        assert 1 <= len(types) <= 6, name
        assert all(t in argwidth.TYPE_BITS for t in types), (name, types)
    for (name, index) in argwidth.NARROWED:
        assert name in argwidth.PROTOTYPES and index < len(argwidth.PROTOTYPES[name].split(","))
        assert argwidth.bits(name, index) == 32
    # The ones the issue names, and a call the table does not know reads 64 bits.
    assert argwidth.bits("ioctl", 1) == argwidth.bits("socket", 0) == argwidth.bits("socket", 1) \
        == argwidth.bits("fcntl", 1) == argwidth.bits("prctl", 0) == 32
    assert argwidth.bits("unshare", 0) == argwidth.bits("ioctl", 2) == 64
    assert argwidth.bits("no_such_call", 0) == 64


def test_imported_whole_register_tests_become_masked_blocks() -> None:
    """OCI profiles compare all 64 bits (Docker: socket allowed if domain > 40, so
    AF_ALG | 1 << 32 passed); the importer writes what the kernel reads instead."""
    from warden.profiles import oci

    doc = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_GT"}]},
        {"names": ["exit_group", "exit"], "action": "SCMP_ACT_ALLOW"}]}
    imported = oci.load_oci(json.dumps(doc), "x.json")
    assert any("32-bit argument" in n for n in imported.notes)
    code = compiler.compile_policy(imported.policy)
    sock = syscalls.number("socket") or 0
    af_alg, af_vsock, af_max = 38, 40, 46
    got = records(try_syscalls(code, [(sock, (d, 1, 0)) for d in
                                      (af_alg | 1 << 32, af_vsock, af_max, 1 << 32 | af_max)]))
    # AF_ALG with the high bit set is refused now; domains above 40 still reach the kernel
    assert [errno for _, errno in got][:2] == [1, 1]
    assert all(errno != 1 for _, errno in got[2:])


def test_the_docs_list_the_table() -> None:
    text = (ROOT / "docs" / "profiles.md").read_text()
    body = text.split("<!-- BEGIN ARGWIDTH TABLE -->\n", 1)[1].split(
        "\n<!-- END ARGWIDTH TABLE -->", 1)[0]
    assert body == argwidth.markdown_table()

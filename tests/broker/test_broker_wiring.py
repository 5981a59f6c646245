"""broker.wiring.filter_policy without a fork: the compiled default profile with the
brokered calls, read by warden's own BPF interpreter (what the kernel would do)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from warden.profiles import load_profile
from warden.profiles.bpf import evaluate
from warden.profiles.compiler import compile_policy
from warden.profiles.model import Action, ActionKind, ArgCondition, ArgOp, SyscallRule
from warden.profiles.syscalls import number
from warden.supervisor.broker import wiring

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 numbers")

ALLOW, NOTIFY, EPERM = 0x7FFF0000, 0x7FC00000, 0x00050000 | 1  # SECCOMP_RET_*
AT_EMPTY_PATH, AF_UNIX, AF_INET, AF_INET6 = 0x1000, 1, 2, 10


def _bpf(paths: bool, addresses: bool, rules: tuple[SyscallRule, ...] = ()) -> bytes:
    prof = load_profile("default")
    seccomp = dataclasses.replace(prof.seccomp, rules=(*prof.seccomp.rules, *rules))
    names = wiring.calls(paths=paths, addresses=addresses)
    return compile_policy(wiring.filter_policy(seccomp, names, "default"), kill_as_notify=True)


AF_PACKET = 17


def _ret(bpf: bytes, call: str, *args: int) -> int:
    nr = number(call)
    assert nr is not None
    return evaluate(bpf, nr, args)


def test_paths_only_notify_the_open_family_and_lookups_not_connect() -> None:
    bpf = _bpf(paths=True, addresses=False)
    for call in ("open", "openat", "openat2", "creat", "stat", "lstat", "access",
                 "faccessat", "faccessat2"):
        assert _ret(bpf, call) == NOTIFY, call
    # A lookup by descriptor (glibc's fstat) is not sent: AT_EMPTY_PATH.
    assert _ret(bpf, "newfstatat", 3, 0, 0, AT_EMPTY_PATH) == ALLOW
    assert _ret(bpf, "newfstatat", 3, 0, 0, 0) == NOTIFY
    assert _ret(bpf, "statx", 3, 0, AT_EMPTY_PATH) == ALLOW
    assert _ret(bpf, "statx", 3, 0, 0) == NOTIFY
    assert _ret(bpf, "connect") == ALLOW
    assert _ret(bpf, "socket", AF_PACKET) == EPERM  # the profile's own rules stand
    assert _ret(bpf, "socket", AF_INET) == ALLOW


def test_addresses_notify_connect_and_allow_ip_sockets() -> None:
    bpf = _bpf(paths=False, addresses=True)
    assert _ret(bpf, "connect") == NOTIFY
    assert _ret(bpf, "stat") == ALLOW  # no path rules: no lookups
    for family in (AF_UNIX, AF_INET, AF_INET6, AF_INET | 1 << 32):
        assert _ret(bpf, "socket", family) == ALLOW, family
    assert _ret(bpf, "socket", AF_PACKET) == EPERM  # still the profile's answer


def test_the_profiles_conditional_refusals_come_first() -> None:
    no_creat = SyscallRule("openat", Action(ActionKind.ERRNO, 1),
                           (ArgCondition(2, ArgOp.MASKED_EQ, os.O_CREAT, os.O_CREAT),))
    bpf = _bpf(paths=True, addresses=False, rules=(no_creat,))
    assert _ret(bpf, "openat", 0, 0, os.O_CREAT | os.O_WRONLY) == EPERM
    assert _ret(bpf, "openat", 0, 0, os.O_RDONLY) == NOTIFY


def test_a_profile_that_does_not_allow_a_brokered_call_is_refused() -> None:
    prof = load_profile("default")
    killed = dataclasses.replace(prof.seccomp, rules=(
        *prof.seccomp.rules, SyscallRule("openat2", Action(ActionKind.KILL_PROCESS))))
    with pytest.raises(wiring.BrokerFilterError, match=r"^--broker-read: profile default does "
                       r"not allow openat2 \(kill-process\)"):
        wiring.filter_policy(killed, wiring.calls(paths=True, addresses=False), "default")

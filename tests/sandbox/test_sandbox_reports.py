"""Attacks on the seccomp report: a refused call must be recorded however the sandbox
tries to withdraw it (its own signals, another thread ending the process) and
whichever syscall table it goes through (i386 `int 0x80`, x32).

Each test runs a real child in a real sandbox under a filter compiled by warden's
compiler with a listener, and checks the outcome every time, never a timing.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.i386 import NR_GETPID_I386, emulation_works
from tests.sandbox.sandbox_util import py
from warden.profiles import compiler
from warden.profiles.model import ALLOW, KILL_PROCESS, SeccompPolicy, SyscallRule
from warden.supervisor.sandbox import Outcome, Status
from warden.supervisor.sandbox.notify import witness_available
from warden.supervisor.sandbox.seccomp import wait_killable_supported

NR_ACCT = 163  # x86_64: refused below; harmless if it ever ran (EPERM without CAP_SYS_PACCT)
NR_GETPID_X86_64 = 39
X32_BIT = 0x40000000
RUNS = 5

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64",
                                reason="i386 and x32 are x86_64's foreign tables")


def _filter() -> bytes:
    """Everything allowed but acct; compiled the way warden run compiles a profile."""
    policy = SeccompPolicy(default_action=ALLOW, rules=(SyscallRule("acct", KILL_PROCESS),))
    return compiler.compile_policy(policy, kill_as_notify=True)


def _violation(st: Status) -> None:
    assert st.outcome is Outcome.SECCOMP_VIOLATION, st
    assert st.exit_code == 128 + signal.SIGSYS
    assert st.violation is not None


# A 20 µs interval timer whose handler interrupts the refused call, again and again.
# CPython's handlers are installed without SA_RESTART, so an interrupted call
# returns EINTR to the program, which goes on; the kernel withdrew the notification.
_TIMER_LOOP = f"""
import ctypes, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
signal.signal(signal.SIGALRM, lambda *a: None)
signal.setitimer(signal.ITIMER_REAL, 0.00002, 0.00002)
eintr = 0
for _ in range(2000):
    if libc.syscall({NR_ACCT}, 0) == -1 and ctypes.get_errno() == 4:
        eintr += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print("survived", eintr, flush=True)
"""

# One refused call, interrupted by the timer, then a clean exit straight away.
_TIMER_ONCE = f"""
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
signal.signal(signal.SIGALRM, lambda *a: None)
signal.setitimer(signal.ITIMER_REAL, 0.00002, 0.00002)
libc.syscall({NR_ACCT}, 0)
os._exit(0)
"""


def test_refused_call_interrupted_by_the_sandboxs_own_timer_is_recorded() -> None:
    bpf = _filter()
    for _ in range(RUNS):
        r = py(_TIMER_LOOP, bpf=bpf)
        _violation(r.status)
        assert "survived" not in r.out  # killed, not let go on after the EINTR
        assert r.status.violation is not None
        # Either the kernel's record of the call, or a notification it withdrew.
        v = r.status.violation
        if v.nr == -1:
            assert "withdrawn before it could be read" in r.status.reason
        else:
            assert (v.syscall, v.nr, v.arch) == ("acct", NR_ACCT, "x86_64")


def test_one_interrupted_refused_call_then_a_clean_exit() -> None:
    """The notification is withdrawn and no process uses the filter any more before the
    receiving thread looks: only the refusal witness (a one-shot io_uring poll) saw it."""
    if not witness_available():
        pytest.skip("io_uring is unavailable here: the withdrawn call cannot be seen once "
                    "the sandbox has exited (named in the status's weakened list)")
    bpf = _filter()
    for _ in range(RUNS):
        _violation(py(_TIMER_ONCE, bpf=bpf).status)


# One thread makes the refused call; as soon as the kernel shows it waiting in that
# call (/proc/self/task/TID/syscall names its number), the main thread ends the
# whole process with exit_group: the waiting thread is killed, and the kernel takes
# its notification back.
_THREAD_EXIT = f"""
import ctypes, os, threading
libc = ctypes.CDLL(None, use_errno=True)
tid = []
def call():
    tid.append(threading.get_native_id())
    libc.syscall({NR_ACCT}, 0)
threading.Thread(target=call, daemon=True).start()
while not tid:
    pass
while True:
    try:
        with open(f"/proc/self/task/{{tid[0]}}/syscall") as f:
            if f.read().split()[0] == "{NR_ACCT}":
                break
    except OSError:
        pass
os._exit(0)
"""


def test_refused_call_then_exit_group_from_another_thread_is_recorded() -> None:
    if not witness_available():
        pytest.skip("io_uring is unavailable here: a call withdrawn by the exit cannot be "
                    "seen (named in the status's weakened list)")
    bpf = _filter()
    for _ in range(RUNS):
        r = py(_THREAD_EXIT, bpf=bpf)
        _violation(r.status)


# getpid through the i386 entry point from 64-bit code: mov eax, 20; int 0x80; ret.
_INT80 = f"""
import ctypes, mmap
code = bytes([0xB8, {NR_GETPID_I386}, 0, 0, 0, 0xCD, 0x80, 0xC3])
buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))
print("ran", fn(), flush=True)
"""


def test_i386_call_is_a_violation_named_from_the_i386_table() -> None:
    if not emulation_works():
        pytest.skip("this kernel has no i386 emulation (int 0x80 does nothing useful)")
    r = py(_INT80, bpf=_filter())
    _violation(r.status)
    v = r.status.violation
    assert v is not None
    assert (v.arch, v.syscall, v.nr) == ("i386", "getpid", NR_GETPID_I386)
    assert "ran" not in r.out  # the call never ran
    assert r.status.reason == "seccomp refused getpid (i386)"


def test_x32_call_is_a_violation_named_from_the_x32_table() -> None:
    nr = NR_GETPID_X86_64 | X32_BIT
    r = py(f"import ctypes\nprint('ran', ctypes.CDLL(None).syscall({nr}), flush=True)",
           bpf=_filter())
    _violation(r.status)
    v = r.status.violation
    assert v is not None
    assert (v.arch, v.syscall, v.nr) == ("x32", "getpid", nr)
    assert "ran" not in r.out
    assert r.status.reason == "seccomp refused getpid (x32)"


def test_a_clean_run_under_the_same_filter_is_still_ok() -> None:
    """The listener's end (no process uses the filter) is not mistaken for a withdrawal."""
    bpf = _filter()
    for _ in range(RUNS):
        r = py("import os\nprint(os.getpid())", bpf=bpf)
        assert r.status.outcome is Outcome.OK, r.status
        assert r.status.violation is None
        if witness_available() and wait_killable_supported():
            assert not any("seccomp" in w for w in r.status.weakened), r.status.weakened

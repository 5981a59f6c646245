"""Refused calls from workers of every start method are recorded, however the worker
tries to withdraw them: the worker is killed and reported as a seccomp violation,
never left serving, and the supervisor and a sibling carry on.

The worker (tests/supervisor/report_workers.py) runs under `default` with one
more rule, getppid killed: reported through the worker's own listener, while the
zygote's filter lets it through. (Its signal handlers and timers need a profile
that allows rt_sigaction and setitimer, which `strict` kills.)
"""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest

from tests.i386 import NR_GETPID_I386
from tests.supervisor.report_workers import NR_GETPID_X86_64, NR_GETPPID, X32_BIT
from tests.supervisor.util import CALC, METHODS, PRELOAD, run
from tests.supervisor.workers import Calc
from warden.profiles import load_profile
from warden.profiles.model import KILL_PROCESS, SyscallRule
from warden.supervisor import Supervisor, WorkerDied
from warden.supervisor.sandbox import Outcome, Status

TARGET = "tests.supervisor.report_workers:ReportsImpl"
RUNS = 3

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64",
                                reason="the attacks use x86_64 numbers and its foreign tables")


def _refusing_getppid() -> object:
    base = load_profile("default")
    seccomp = dataclasses.replace(
        base.seccomp, rules=(*base.seccomp.rules, SyscallRule("getppid", KILL_PROCESS)))
    return dataclasses.replace(base, name="refuses-getppid", seccomp=seccomp)


PROFILE = _refusing_getppid()


def sup(method: str) -> Supervisor:
    return Supervisor(start_method=method,  # type: ignore[arg-type]
                      zygote_preload=(*PRELOAD, "tests.supervisor.report_workers"))


def _violation(st: Status) -> None:
    assert st.outcome is Outcome.SECCOMP_VIOLATION, st
    assert st.violation is not None, st


async def _attack(s: Supervisor, what: str) -> Status:
    """Spawn a worker, make it attack, and return how it ended (it must not answer)."""
    evil = await s.spawn(Calc, TARGET, profile=PROFILE)  # type: ignore[arg-type]
    with pytest.raises(WorkerDied):
        survived = await evil.remote.act(what)
        pytest.fail(f"the worker kept serving after {what} (returned {survived})")
    return await evil.wait()


@pytest.mark.parametrize("method", METHODS)
def test_timer_interrupted_refused_calls_kill_the_worker(method: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            sibling = await s.spawn(Calc, CALC)
            for _ in range(RUNS):
                st = await _attack(s, "timer_loop")
                _violation(st)
                v = st.violation
                assert v is not None
                if v.nr == -1:
                    assert "withdrawn before it could be read" in st.reason
                else:
                    assert (v.syscall, v.nr) == ("getppid", NR_GETPPID)
                assert await sibling.remote.square(7) == 49
    run(main())


@pytest.mark.parametrize("method", METHODS)
def test_refused_call_then_exit_group_is_recorded(method: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            for _ in range(RUNS):
                _violation(await _attack(s, "thread_exit"))
            assert await (await s.spawn(Calc, CALC)).remote.square(3) == 9
    run(main())


# Fork workers only: zygote and spawn workers are stacked on a launch filter that kills
# foreign calls itself (a kill outranks user-notify), reported as seccomp_violation
# without a name.
@pytest.mark.parametrize("method", ["fork"])
def test_x32_call_from_a_worker_is_named(method: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            st = await _attack(s, "x32")
            _violation(st)
            v = st.violation
            assert v is not None
            assert (v.arch, v.syscall, v.nr) == ("x32", "getpid", NR_GETPID_X86_64 | X32_BIT)
            assert st.exit_code == 128 + signal.SIGSYS
    run(main())


@pytest.mark.parametrize("method", ["fork"])
def test_i386_call_from_a_worker_is_named(method: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            st = await _attack(s, "int80")
            _violation(st)
            v = st.violation
            assert v is not None
            assert (v.arch, v.syscall, v.nr) == ("i386", "getpid", NR_GETPID_I386)
    run(main())

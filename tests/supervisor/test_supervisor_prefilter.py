"""Worker code that runs before its profile's filter (the target's import and
constructor: trusted, under the launch filter only) cannot leave anything behind that
escapes the filter: a thread it started is filtered too (TSYNC), a process it left
running makes the start fail, and a listener of its own cannot be passed off as warden's
(the kernel allows one per filter stack, so warden's own load fails).
"""

from __future__ import annotations

import pytest

from tests.supervisor.util import CALC, METHODS, PRELOAD, run
from tests.supervisor.workers import Calc
from warden.supervisor import SpawnError, Supervisor, WorkerDied
from warden.supervisor.sandbox import Outcome

MOD = "tests.supervisor.prefilter_workers"


def sup(method: str) -> Supervisor:
    return Supervisor(start_method=method, zygote_preload=(*PRELOAD, MOD))


@pytest.mark.parametrize("method", METHODS)
def test_a_thread_started_before_the_filter_is_filtered_too(method: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            sibling = await s.spawn(Calc, CALC)
            w = await s.spawn(Calc, f"{MOD}:ThreadBeforeFilter", profile="strict")
            with pytest.raises(WorkerDied):
                await w.remote.act("thread_open")  # strict: open is fatal, from any thread
            st = await w.wait()
            assert st.outcome is Outcome.SECCOMP_VIOLATION, st
            assert st.violation is not None and st.violation.syscall in ("open", "openat")
            assert await sibling.remote.square(4) == 16
    run(main())


@pytest.mark.parametrize("method", METHODS)
def test_a_process_left_before_the_filter_fails_the_start(method: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            with pytest.raises(SpawnError, match="left processes running before its "
                                                 "profile's filter was loaded"):
                await s.spawn(Calc, f"{MOD}:ForkBeforeFilter", profile="strict")
            w = await s.spawn(Calc, CALC)
            assert await w.remote.square(5) == 25
    run(main())


@pytest.mark.parametrize("method", METHODS)
def test_a_listener_of_the_targets_own_is_never_accepted(method: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            with pytest.raises(SpawnError) as info:
                await s.spawn(Calc, f"{MOD}:OwnListenerBeforeFilter", profile="strict")
            # Either the launch filter refused the target's own listener, or warden's
            # load then failed: one listener per filter stack (EBUSY). Never served.
            assert ("loaded a seccomp filter with a listener of its own" in str(info.value)
                    or "could not load the target's own filter" in str(info.value)), info.value
            assert info.value.status is not None
            assert info.value.status.outcome in (Outcome.SETUP_ERROR,
                                                 Outcome.SECCOMP_VIOLATION)
            w = await s.spawn(Calc, CALC)
            assert await w.remote.square(6) == 36
    run(main())



"""Pool liveness: a worker's channel and its process end together, and nothing waits on either.

Each attack runs from a real worker among honest ones: the hostile worker is
killed with an outcome that says what it did, the pool is back to full
strength, every honest call is answered correctly, and no fd or zombie is left.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time

import pytest

from tests.supervisor.util import CALC, METHODS, PRELOAD, eventually, run, zombie_children
from tests.supervisor.workers import Calc, HostImpl
from warden.supervisor import Supervisor, SyncSupervisor, WorkerDied
from warden.supervisor.events import BadMessageEvent, Event, Exited, Started
from warden.supervisor.pool import DeadlineExceeded, Pool, RestartPolicy
from warden.supervisor.sandbox import Outcome

LIVENESS = "tests.supervisor.workers:LivenessImpl"
FAST = RestartPolicy("on-failure", backoff=0.01, max_backoff=0.05)
HUNG_UP = "the worker closed its channel while its process kept running (the channel ended first)"


def sup(method: str = "zygote") -> Supervisor:
    return Supervisor(start_method=method, zygote_preload=PRELOAD)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def honest_size(method: str) -> int:
    return 2 if method == "spawn" else 4  # a spawn worker is a whole sandbox: ~0.2 s each


def drain(q: asyncio.Queue[Event]) -> list[Event]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


@pytest.mark.parametrize("what", ["hang_up", "exec"])
@pytest.mark.parametrize("method", METHODS)
def test_channel_closed_while_running_is_killed_and_replaced(method: str, what: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            q = s.event_queue()
            honest = await s.pool(Calc, CALC, size=honest_size(method), profile="python-worker")
            hostile = await s.pool(Calc, LIVENESS, size=2, profile="default", restart=FAST)
            fds = open_fds()  # its replacement holds what the hostile worker held
            work = asyncio.gather(*(honest.call("square", i, deadline=60) for i in range(300)))
            with pytest.raises(WorkerDied, match=re.escape(f"ended during act(): bad_message: "
                                                           f"{HUNG_UP}")) as died:
                await hostile.call("act", what)
            # The outcome came with the failure: no timeout stood in for it.
            assert died.value.status is not None
            assert died.value.status.outcome is Outcome.BAD_MESSAGE
            assert died.value.status.reason == HUNG_UP
            assert await work == [i * i for i in range(300)]
            assert await hostile.full()
            assert hostile.status()["alive"] == 2 and hostile.restarts == 1
            assert await asyncio.gather(*(hostile.call("square", i) for i in range(10))) \
                == [i * i for i in range(10)]
            evs = drain(q)
            bad = [e for e in evs if isinstance(e, BadMessageEvent)]
            assert [(e.worker_id, e.interface, e.method, e.reason) for e in bad] == \
                [(died.value.worker_id, "test.Calc", None, HUNG_UP)]
            await eventually(lambda: open_fds() == fds, "the killed worker's fds closed")
            await honest.aclose()
            await hostile.aclose()
            assert zombie_children() == []
    run(main())


@pytest.mark.parametrize("method", METHODS)
def test_exit_0_mid_call_is_a_failure_and_replaced(method: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            q = s.event_queue()
            honest = await s.pool(Calc, CALC, size=honest_size(method), profile="python-worker")
            pool = await s.pool(Calc, CALC, size=2)  # default restart policy: on-failure
            work = asyncio.gather(*(honest.call("square", i, deadline=60) for i in range(200)))
            # Twice, as many as the pool has workers: once drained it for good.
            for _ in range(2):
                with pytest.raises(WorkerDied, match=r"ended during act\(\): exited with code 0 "
                                   r"\(the worker exited with code 0 during a call; the "
                                   r"supervisor had not asked it to end\)") as died:
                    await pool.call("act", "exit", 0)
                assert died.value.status is not None
                assert died.value.status.outcome is Outcome.EXITED
                assert await pool.full()
            assert pool.restarts == 2 and pool.status()["alive"] == 2
            assert await asyncio.gather(*(pool.call("square", i) for i in range(10))) == \
                [i * i for i in range(10)]
            assert await work == [i * i for i in range(200)]
            exits = [e for e in drain(q) if isinstance(e, Exited)]
            assert [e.status.outcome for e in exits] == [Outcome.EXITED] * 2
            # An exit the supervisor asked for is still ok.
            w = await s.spawn(Calc, CALC)
            assert (await w.terminate()).outcome is Outcome.OK
            await pool.aclose()
            await honest.aclose()
            assert zombie_children() == []
    run(main())


@pytest.mark.parametrize("how", [socket.SHUT_WR, socket.SHUT_RDWR])
def test_channel_shut_down_while_running_is_killed_and_replaced(how: int) -> None:
    async def main() -> None:
        async with sup() as s:
            q = s.event_queue()
            hostile = await s.pool(Calc, LIVENESS, size=2, profile="default", restart=FAST)
            with pytest.raises(WorkerDied) as died:
                await hostile.call("act", "shutdown", how)
            st = died.value.status
            assert st is not None and st.outcome is Outcome.BAD_MESSAGE, st
            assert await hostile.full() and hostile.restarts == 1
            assert await hostile.call("square", 6) == 36
            assert [e.worker_id for e in drain(q) if isinstance(e, BadMessageEvent)] == \
                [died.value.worker_id]
    run(main())


def test_exit_0_while_idle_is_a_failure_and_replaced() -> None:
    async def main() -> None:
        async with sup() as s:
            q = s.event_queue()
            pool = await s.pool(Calc, LIVENESS, size=2, profile="default", restart=FAST)
            assert await pool.call("act", "exit_later") == 0
            await eventually(lambda: pool.restarts == 1, "the worker that left was replaced",
                             3000)
            exits = [e.status for e in drain(q) if isinstance(e, Exited)]
            assert [(st.outcome, st.reason) for st in exits] == [
                (Outcome.EXITED, "the worker exited with code 0 on its own; the supervisor "
                                 "had not asked it to end")]
            assert await pool.full()
            assert await pool.call("square", 7) == 49
    run(main())


async def _served_after(pool: Pool, calls: int = 30) -> int:
    """How many of `calls` calls are answered (each may wait at most 60 s for a worker)."""
    results = await asyncio.gather(*(pool.call("square", i, deadline=60)
                                     for i in range(calls)), return_exceptions=True)
    return sum(1 for i, r in enumerate(results) if r == i * i)


async def _hang(pool: Pool, how: str) -> None:
    call = pool.call("act", "hang")
    if how == "wait_for":
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call, 0.05)
    elif how == "timeout":
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await call
    else:  # a TaskGroup cancels its other tasks when one fails
        async def fail() -> None:
            await asyncio.sleep(0.05)
            raise LookupError("a sibling failed")

        with pytest.raises(ExceptionGroup) as group:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(call)
                tg.create_task(fail())
        assert group.group_contains(LookupError)


@pytest.mark.parametrize("how", ["wait_for", "timeout", "taskgroup"])
def test_cancelled_call_keeps_its_hung_worker_out_of_rotation(how: str) -> None:
    async def main() -> None:
        async with sup() as s:
            pool = await s.pool(Calc, CALC, size=3, profile="python-worker")
            await _hang(pool, how)
            # The hung worker is still busy: every later call goes to the other two.
            assert await _served_after(pool) == 30
            assert pool.status()["idle"] == 2 and pool.restarts == 0
    run(main())


def test_cancelled_call_releases_its_worker_when_the_reply_comes() -> None:
    async def main() -> None:
        async with sup() as s:
            pool = await s.pool(Calc, CALC, size=2, profile="python-worker")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pool.call("sleep", 300), 0.02)
            await eventually(lambda: pool.status()["idle"] == 2, "the late reply freed it")
            assert pool.restarts == 0 and len(pool.workers) == 2
            assert await _served_after(pool) == 30
    run(main())


def test_cancelled_call_past_its_deadline_kills_its_worker() -> None:
    async def main() -> None:
        async with sup() as s:
            q = s.event_queue()
            pool = await s.pool(Calc, CALC, size=2, profile="python-worker", restart=FAST)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pool.call("act", "hang", deadline=0.3), 0.02)
            await eventually(lambda: pool.restarts == 1, "the hung worker was replaced", 3000)
            exits = [e for e in drain(q) if isinstance(e, Exited)]
            assert [(e.status.outcome, e.status.reason) for e in exits] == [
                (Outcome.TIMEOUT, "call act() was cancelled by its caller and exceeded its "
                                  "0.3s deadline")]
            assert await pool.full()
            assert await _served_after(pool) == 30
    run(main())


def test_sync_face_cancelled_call_keeps_its_hung_worker_out_of_rotation() -> None:
    with SyncSupervisor(start_method="zygote", zygote_preload=PRELOAD) as s:
        pool = s.pool(Calc, CALC, size=3, profile="python-worker")
        with pytest.raises(TimeoutError):
            pool.call("act", "hang", timeout=0.05)
        served = sum(1 for i in range(30) if pool.call("square", i, deadline=60) == i * i)
        assert served == 30
        assert pool.status()["idle"] == 2 and pool.status()["restarts"] == 0
        # A cancelled call on a healthy worker gives it back once it answers.
        with pytest.raises(TimeoutError):
            pool.call("sleep", 300, timeout=0.02)
        for _ in range(3000):
            if pool.status()["idle"] == 2:
                break
            time.sleep(0.01)
        assert pool.status()["idle"] == 2
        with pytest.raises(DeadlineExceeded):
            pool.call("act", "hang", deadline=0.2)


def test_sync_face_channel_hang_up_is_killed_and_replaced() -> None:
    with SyncSupervisor(start_method="zygote", zygote_preload=PRELOAD) as s:
        pool = s.pool(Calc, LIVENESS, size=2, profile="default", restart=FAST)
        with pytest.raises(WorkerDied, match=re.escape(HUNG_UP)):
            pool.call("act", "hang_up")
        assert s._run(pool.pool.full())
        assert [pool.call("square", i) for i in range(10)] == [i * i for i in range(10)]


def test_events_carry_timestamps_and_events_iterates_until_close() -> None:
    async def main() -> None:
        before_wall, before = time.time(), time.monotonic()
        s = sup()
        await s.start()
        stream = s.events()  # receives every event from here on

        async def read() -> list[Event]:
            return [e async for e in stream]

        reader = asyncio.ensure_future(read())
        try:
            w = await s.spawn(Calc, CALC)
            await w.terminate()
        finally:
            await s.aclose()
        seen = await reader  # ends when the supervisor closes
        after_wall, after = time.time(), time.monotonic()
        assert [type(e) for e in seen] == [Started, Exited]
        for e in seen:
            assert before_wall <= e.time <= after_wall
            assert before <= e.monotonic <= after
        assert seen[0].monotonic <= seen[1].monotonic
    run(main())


@pytest.mark.parametrize("method", ["zygote", "fork"])
@pytest.mark.parametrize("what,reason", [
    ("bad_frame", "invalid envelope: Expected `array`, got `int`"),
    ("unknown_method", "unknown method id 0x1234abcd")])
def test_unattributable_bad_frame_is_reported_as_the_workers(
        method: str, what: str, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with sup(method) as s:
            q = s.event_queue()
            good = await s.spawn(Calc, CALC, host=HostImpl())
            bad = await s.spawn(Calc, LIVENESS, host=HostImpl(), profile="default")
            with pytest.raises(WorkerDied, match=f"worker {bad.id} ended during act"):
                await bad.remote.act(what)
            assert (await bad.wait()).outcome is Outcome.BAD_MESSAGE
            assert await good.remote.square(5) == 25
            evs = [e for e in drain(q) if isinstance(e, BadMessageEvent)]
            assert [(e.worker_id, e.pid, e.interface, e.method, e.reason) for e in evs] == \
                [(bad.id, bad.pid, "test.Calc", None, reason)]
    with caplog.at_level("WARNING", logger="warden.supervisor"):
        run(main())
    logged = [r.getMessage() for r in caplog.records if r.name == "warden.supervisor"]
    assert any(f"sent a bad message (on its test.Calc channel, no method): {reason}" in m
               for m in logged), logged
    assert not any("test.Host" in m or ".None" in m for m in logged), logged


def test_program_that_closes_its_channel_is_killed_not_one_that_never_used_it() -> None:
    """spawn_program: the pid the supervisor knows is the sandbox's init, so whether the
    program is on its way out is read from the init's first child."""
    async def main() -> None:
        async with sup("spawn") as s:
            hung_up = await s.spawn_program(["/bin/sh", "-c", "exec 3>&-; exec sleep 100"],
                                            interface=Calc, profile="default")
            st = await hung_up.wait()
            assert (st.outcome, st.reason) == (Outcome.BAD_MESSAGE, HUNG_UP)
            # No interface: the channel is not the program's lifeline, and its exit is its own.
            plain = await s.spawn_program(["/bin/sh", "-c", "exec 3>&-; exit 0"],
                                          profile="default")
            assert (await plain.wait()).outcome is Outcome.OK
            served = await s.spawn_program(["/bin/sh", "-c", "exit 0"], interface=Calc,
                                           profile="default")
            st = await served.wait()
            assert st.outcome is Outcome.EXITED
            assert st.reason == ("the worker exited with code 0 on its own; the supervisor "
                                 "had not asked it to end")
            assert zombie_children() == []
    run(main())


def test_pipelined_calls_on_a_hung_up_worker_fail_with_its_outcome() -> None:
    async def main() -> None:
        async with sup() as s:
            pool = await s.pool(Calc, LIVENESS, size=1, per_worker=4, profile="default",
                                restart=FAST)
            calls = [pool.call("sleep", 200), pool.call("act", "hang_up"),
                     pool.call("sleep", 200), pool.call("square", 3)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            # The first one's reply may not have left the worker when it hangs up (its
            # runtime may hold replies while more calls wait); the others cannot have one.
            # Every call without a reply fails with the outcome (no timeout stands in).
            assert results[0] == 200 or isinstance(results[0], WorkerDied)
            for r in results[1:] if results[0] == 200 else results:
                assert isinstance(r, WorkerDied), r
                assert r.status is not None and r.status.reason == HUNG_UP
            assert await pool.full()
            assert await pool.call("square", 4) == 16
    run(main())

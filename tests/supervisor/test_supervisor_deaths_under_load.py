"""Deaths under load: a hostile worker among many busy honest ones is killed, and its end
recorded, with the outcome and reason of what it did; every honest call is answered.

The supervisor serves the end of a worker it has killed from inside whatever channel
callback runs next (its death watch), and the pool hands each worker its next queued call
from inside the read callback that brought the reply. These tests attack both paths while
the loop is saturated with calls.
"""

from __future__ import annotations

import asyncio
import os
import re
import select

import pytest

from tests.supervisor.util import CALC, PRELOAD, eventually, run, zombie_children
from tests.supervisor.workers import Calc
from warden.supervisor import Supervisor, WorkerDied
from warden.supervisor.events import BadMessageEvent, Event, Exited
from warden.supervisor.pool import DeadlineExceeded, Pool, PoolError, RestartPolicy
from warden.supervisor.sandbox import Outcome

LIVENESS = "tests.supervisor.workers:LivenessImpl"
FAST = RestartPolicy("on-failure", backoff=0.01, max_backoff=0.05)
HUNG_UP = "the worker closed its channel while its process kept running (the channel ended first)"
EXIT_0 = ("the worker exited with code 0 during a call; the supervisor had not asked it "
          "to end")
HONEST = 12  # honest workers, each with two callers answering square() back to back


def sup() -> Supervisor:
    return Supervisor(zygote_preload=PRELOAD)


class Load:
    """Callers keeping an honest pool busy until stopped; every answer is checked."""

    def __init__(self, pool: Pool[Calc]) -> None:
        self.pool = pool
        self.stop = False
        self.answered = 0
        self.wrong: list[object] = []
        self.tasks = [asyncio.ensure_future(self._caller(i)) for i in range(2 * HONEST)]

    async def _caller(self, seed: int) -> None:
        n = seed
        while not self.stop:
            n = (n * 7 + 1) % 1000
            try:
                got = await self.pool.call("square", n, deadline=60)
            except Exception as e:  # every failure is a test failure
                self.wrong.append(e)
                continue
            if got != n * n:
                self.wrong.append((n, got))
            self.answered += 1

    async def finish(self) -> int:
        before = self.answered
        await eventually(lambda: self.answered > before + 50, "honest calls still answered")
        self.stop = True
        await asyncio.gather(*self.tasks)
        assert self.wrong == []
        return self.answered


def exits(q: asyncio.Queue[Event]) -> list[Exited]:
    out = []
    while not q.empty():
        e = q.get_nowait()
        if isinstance(e, Exited):
            out.append(e)
    return out


@pytest.mark.parametrize(("what", "outcome", "reason"), [
    ("bad_frame", Outcome.BAD_MESSAGE, r"test\.Calc.*"),
    ("hang_up", Outcome.BAD_MESSAGE, re.escape(HUNG_UP)),
    ("exit", Outcome.EXITED, re.escape(EXIT_0)),
])
def test_hostile_worker_under_load_is_killed_with_its_reason(
        what: str, outcome: Outcome, reason: str) -> None:
    async def main() -> None:
        async with sup() as s:
            q = s.event_queue()
            honest = await s.pool(Calc, CALC, size=HONEST, profile="python-worker")
            hostile = await s.pool(Calc, LIVENESS, size=2, profile="default", restart=FAST)
            load = Load(honest)
            await eventually(lambda: load.answered > 100, "the honest pool is busy")
            for _ in range(3):
                with pytest.raises(WorkerDied) as died:
                    await hostile.call("act", what, 0)
                st = died.value.status
                assert st is not None and st.outcome is outcome, st
                if what != "bad_frame":  # a bad frame's reason names the decoder's finding
                    assert re.fullmatch(reason, st.reason or ""), st.reason
                assert await hostile.full()
            assert await load.finish() > 0
            ended = [e for e in exits(q) if e.worker_id.startswith(hostile.name)]
            assert [e.status.outcome for e in ended] == [outcome] * 3
            assert hostile.restarts == 3
            assert await asyncio.gather(*(hostile.call("square", i) for i in range(20))) == \
                [i * i for i in range(20)]
            await honest.aclose()
            await hostile.aclose()
            assert zombie_children() == []
    run(main())


@pytest.mark.parametrize("cancelled", [False, True])
def test_hung_call_under_load_is_killed_at_its_deadline(cancelled: bool) -> None:
    async def main() -> None:
        async with sup() as s:
            q = s.event_queue()
            honest = await s.pool(Calc, CALC, size=HONEST, profile="python-worker")
            hostile = await s.pool(Calc, CALC, size=2, profile="python-worker", restart=FAST)
            load = Load(honest)
            await eventually(lambda: load.answered > 100, "the honest pool is busy")
            call = hostile.call("act", "hang", deadline=0.3)
            if cancelled:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(call, 0.02)
                why = "call act() was cancelled by its caller and exceeded its 0.3s deadline"
                # Until its deadline the hung worker takes no call; the other one takes all.
                assert await asyncio.gather(*(hostile.call("square", i) for i in range(20))) \
                    == [i * i for i in range(20)]
            else:
                with pytest.raises(DeadlineExceeded, match=r"act\(\) exceeded its 0\.3s "
                                   r"deadline; the worker was killed"):
                    await call
                why = "call act() exceeded its 0.3s deadline"
            await eventually(lambda: hostile.restarts == 1, "the hung worker was replaced")
            assert await hostile.full()
            assert await load.finish() > 0
            ended = [e for e in exits(q) if e.worker_id.startswith(hostile.name)]
            assert [(e.status.outcome, e.status.reason) for e in ended] == \
                [(Outcome.TIMEOUT, why)]
            await honest.aclose()
            await hostile.aclose()
            assert zombie_children() == []
    run(main())


def test_cancelled_hung_call_reason_under_load() -> None:
    async def main() -> None:
        async with sup() as s:
            q = s.event_queue()
            honest = await s.pool(Calc, CALC, size=HONEST, profile="python-worker")
            hostile = await s.pool(Calc, CALC, size=1, profile="python-worker", restart=FAST)
            load = Load(honest)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(hostile.call("act", "hang", deadline=0.3), 0.02)
            # Queued behind the hung worker: it waits (no worker is free) and is answered
            # by the replacement, within its own deadline.
            assert await hostile.call("square", 9, deadline=30) == 81
            ended = [e for e in exits(q) if e.worker_id.startswith(hostile.name)]
            assert [(e.status.outcome, e.status.reason) for e in ended] == [
                (Outcome.TIMEOUT, "call act() was cancelled by its caller and exceeded its "
                                  "0.3s deadline")]
            assert await load.finish() > 0
    run(main())


def test_killed_worker_is_reported_from_the_next_channel_callback() -> None:
    """Once the kernel says a killed worker has ended (its pidfd readable), the next call
    sent on any channel records that end, before the loop gets to the pidfd's own turn."""
    async def main() -> None:
        async with sup() as s:
            victim = await s.spawn(Calc, CALC, profile="python-worker")
            other = await s.spawn(Calc, CALC, profile="python-worker")
            pidfd = os.pidfd_open(victim.pid)
            try:
                victim.kill("killed by the test")
                select.select([pidfd], [], [])  # blocks the loop: its reader cannot run
            finally:
                os.close(pidfd)
            assert victim.running  # nothing has run on the loop since
            reply = other.remote.square(12)  # the send checks the killed worker first
            assert not victim.running
            assert victim.status is not None
            assert (victim.status.outcome, victim.status.reason) == (
                Outcome.KILLED, "killed by the test")
            assert await reply == 144
            assert (await victim.wait()).outcome is Outcome.KILLED
    run(main())


def test_bad_frame_beside_saturated_workers_reports_every_death_once() -> None:
    async def main() -> None:
        async with sup() as s:
            q = s.event_queue()
            honest = await s.pool(Calc, CALC, size=HONEST, profile="python-worker")
            load = Load(honest)
            await eventually(lambda: load.answered > 100, "the honest pool is busy")
            ids = []
            for _ in range(10):
                w = await s.spawn(Calc, CALC, profile="python-worker")
                ids.append(w.id)
                call = w.remote.act("bad_frame")
                st = await w.wait()
                assert st.outcome is Outcome.BAD_MESSAGE
                with pytest.raises(WorkerDied):
                    await call
            assert await load.finish() > 0
            evs = []
            while not q.empty():
                evs.append(q.get_nowait())
            assert [e.worker_id for e in evs if isinstance(e, BadMessageEvent)] == ids
            assert [e.worker_id for e in evs if isinstance(e, Exited)
                    and e.worker_id in ids] == ids
            assert len(s._deaths) == 0  # nothing left watched
            await honest.aclose()
            assert zombie_children() == []
    run(main())


def test_queued_calls_keep_their_order_errors_and_deadlines() -> None:
    """Calls waiting for a worker: one its declaration refuses fails alone, one whose
    deadline passes in the queue fails with its own sentence, one cancelled never runs;
    the others are answered in order by the worker freed."""
    async def main() -> None:
        async with sup() as s:
            pool = await s.pool(Calc, CALC, size=1, profile="python-worker")
            busy = asyncio.ensure_future(pool.call("sleep", 300))
            await asyncio.sleep(0)
            first = asyncio.ensure_future(pool.call("square", 3))
            refused = asyncio.ensure_future(pool.call("square", -1))  # out of range
            late = asyncio.ensure_future(pool.call("square", 4, deadline=0.05))
            gone = asyncio.ensure_future(pool.call("act", "exit", 1))
            last = asyncio.ensure_future(pool.call("square", 5))
            await asyncio.sleep(0)
            assert pool.status()["waiting_calls"] == 5
            gone.cancel()
            with pytest.raises(DeadlineExceeded, match=r"pool '.*': no worker free within "
                               r"0\.05s for square\(\)"):
                await late
            assert await busy == 300
            assert await first == 9
            with pytest.raises(ValueError):
                await refused
            assert await last == 25
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert pool.restarts == 0 and pool.status()["idle"] == 1
            assert pool.calls_ok == 3
            await pool.aclose()
            with pytest.raises(PoolError, match="is closed"):
                await pool.call("square", 1)
    run(main())


def test_a_killed_worker_takes_no_call_and_is_not_counted_before_its_end() -> None:
    """Between the SIGKILL and the kernel's report of the end, a worker is `running` but
    not `alive`: the pool neither counts it (status, `full()`) nor hands it a call, so a
    kill decided on one channel (a broker cut-off, a bad reply) cannot be raced by a
    reply on another channel into a pool that looks whole."""
    async def main() -> None:
        async with sup() as s:
            pool = await s.pool(Calc, CALC, size=2, profile="python-worker", restart=FAST)
            victim = next(iter(pool.workers.values()))
            victim.kill("killed by the test")
            assert victim.running and not victim.alive
            assert pool.status()["alive"] == 1
            # Calls made now go to the other worker or a replacement, never the victim.
            assert await asyncio.gather(*(pool.call("square", i) for i in range(40))) == \
                [i * i for i in range(40)]
            assert await pool.full()
            assert victim.id not in pool.workers and victim.status is not None
            assert victim.status.outcome is Outcome.KILLED
            assert victim.status.reason == "killed by the test"
            await pool.aclose()
            assert zombie_children() == []
    run(main())

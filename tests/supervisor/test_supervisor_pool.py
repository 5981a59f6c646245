"""Pools: routing to idle workers, restart policies and crash loops, deadlines, health checks."""

from __future__ import annotations

import asyncio

import pytest

from tests.supervisor.util import CALC, PRELOAD, eventually, run
from tests.supervisor.workers import Calc
from warden.supervisor import Exited, Restarted, Supervisor, WorkerDied
from warden.supervisor.pool import DeadlineExceeded, PoolError, RestartPolicy
from warden.supervisor.sandbox import Outcome

FAST = RestartPolicy("on-failure", backoff=0.01, max_backoff=0.05)


def sup() -> Supervisor:
    return Supervisor(start_method="zygote", zygote_preload=PRELOAD)


def test_calls_are_routed_to_idle_workers() -> None:
    async def main() -> None:
        async with sup() as s:
            pool = await s.pool(Calc, CALC, size=2, profile="python-worker")
            results = await asyncio.gather(*(pool.call("sleep", 20) for _ in range(6)),
                                           *(pool.call("square", i) for i in range(20)))
            assert results == [20] * 6 + [i * i for i in range(20)]
            pids = {w.pid for w in pool.workers.values()}
            assert len(pids) == 2
            st = pool.status()
            assert st["alive"] == 2 and st["calls_ok"] == 26 and st["calls_failed"] == 0
    run(main())


def test_death_mid_call_fails_that_call_only_and_is_restarted() -> None:
    async def main() -> None:
        async with sup() as s:
            q = s.event_queue()
            pool = await s.pool(Calc, CALC, size=3, restart=FAST, profile="python-worker")
            slow = [asyncio.ensure_future(pool.call("sleep", 100)) for _ in range(2)]
            await eventually(lambda: _in_flight(pool) == 2, "both slow calls sent")
            with pytest.raises(WorkerDied, match=r"ended during act\(\): exited with code 9"):
                await pool.call("act", "exit", 9)
            assert await asyncio.gather(*slow) == [100, 100]
            await eventually(lambda: len(pool.workers) == 3 and pool.restarts == 1,
                             "the dead worker was replaced")
            assert await pool.call("square", 11) == 121
            evs = []
            while not q.empty():
                evs.append(q.get_nowait())
            assert any(isinstance(e, Restarted) and e.pool == pool.name for e in evs)
    run(main())


def test_restart_never_and_always() -> None:
    async def main() -> None:
        async with sup() as s:
            never = await s.pool(Calc, CALC, size=2, restart=RestartPolicy("never"))
            with pytest.raises(WorkerDied) as died:
                await never.call("act", "exit", 0)
            dead = died.value.worker_id
            await eventually(lambda: dead not in never.workers, "the dead worker left the pool")
            assert len(never.workers) == 1 and never.restarts == 0  # and was not replaced
            assert await never.call("square", 3) == 9
            always = await s.pool(Calc, CALC, size=1,
                                  restart=RestartPolicy("always", backoff=0.01))
            with pytest.raises(WorkerDied):
                await always.call("act", "exit", 0)  # a clean exit is replaced too
            assert await always.call("square", 4, deadline=10) == 16
            assert always.restarts == 1
    run(main())


def test_crash_loop_limit_stops_restarts() -> None:
    async def main() -> None:
        async with sup() as s:
            policy = RestartPolicy("on-failure", backoff=0.005, max_backoff=0.01,
                                   crash_loop_limit=3, crash_loop_window=60)
            pool = await s.pool(Calc, CALC, size=1, restart=policy)
            deaths = 0
            with pytest.raises(PoolError, match="crash-loop limit"):
                for _ in range(10):
                    with pytest.raises(WorkerDied):
                        await pool.call("act", "exit", 1)
                    deaths += 1
            assert deaths == 4 and pool.restarts == 3
            assert pool.failed is not None
    run(main())


def test_deadline_kills_the_stuck_worker_and_others_go_on() -> None:
    async def main() -> None:
        async with sup() as s:
            pool = await s.pool(Calc, CALC, size=2, restart=FAST, profile="python-worker")
            stuck_ids = set(pool.workers)
            with pytest.raises(DeadlineExceeded, match=r"exceeded its 0\.2s deadline"):
                await pool.call("sleep", 60000, deadline=0.2)
            assert await pool.call("square", 5) == 25
            await eventually(lambda: len(pool.workers) == 2 and pool.restarts == 1,
                             "replaced after the timeout")
            assert set(pool.workers) != stuck_ids
    run(main())


def test_health_check_replaces_a_worker_that_does_not_answer() -> None:
    async def main() -> None:
        async with sup() as s:
            q = s.event_queue()
            pool = await s.pool(Calc, "tests.supervisor.workers:SickImpl", size=1,
                                restart=FAST, profile="python-worker", health_check="ping",
                                health_interval=0.2)
            await eventually(lambda: pool.restarts >= 1, "a restart after the failed check")
            exits = []
            while not q.empty():
                e = q.get_nowait()
                if isinstance(e, Exited):
                    exits.append(e)
            assert exits and exits[0].status.outcome is Outcome.TIMEOUT
            assert "health check ping()" in exits[0].status.reason
    run(main())


def test_restart_policy_validation() -> None:
    with pytest.raises(ValueError, match="restart mode 'sometimes'"):
        RestartPolicy("sometimes")


def test_per_worker_pipelines_calls_and_a_death_fails_only_that_workers_calls() -> None:
    async def main() -> None:
        async with sup() as s:
            pool = await s.pool(Calc, CALC, size=2, per_worker=4, restart=FAST,
                                profile="python-worker")
            assert await asyncio.gather(*(pool.call("square", i) for i in range(40))) == \
                [i * i for i in range(40)]
            victim = next(iter(pool.workers.values()))
            calls = [asyncio.ensure_future(pool.call("sleep", 200)) for _ in range(8)]
            await eventually(lambda: _in_flight(pool) == 8, "all eight calls sent")
            victim.kill()
            done = await asyncio.gather(*calls, return_exceptions=True)
            died = [d for d in done if isinstance(d, WorkerDied)]
            assert len(died) == 4 and all(d == 200 for d in done if d not in died)
            assert all(e.worker_id == victim.id for e in died)
    run(main())


def test_full_waits_for_replacements() -> None:
    async def main() -> None:
        async with sup() as s:
            pool = await s.pool(Calc, CALC, size=2, restart=RestartPolicy("on-failure",
                                                                          backoff=0.2))
            with pytest.raises(WorkerDied) as died:
                await pool.call("act", "exit", 1)
            # The dead worker serves no more calls, and leaves the pool (its replacement
            # comes after the backoff, however late these lines run).
            dead = died.value.worker_id
            assert dead not in pool.workers or not pool.workers[dead].alive
            await eventually(lambda: dead not in pool.workers, "the dead worker left the pool")
            assert await pool.full(timeout=30)
            assert len(pool.workers) == 2 and pool.restarts == 1
            never = await s.pool(Calc, CALC, size=1, restart=RestartPolicy("never"))
            with pytest.raises(WorkerDied):
                await never.call("act", "exit", 1)
            assert not await never.full(timeout=0.2)
    run(main())


def _in_flight(pool: object) -> int:
    """Calls sent to the pool's workers and not answered yet (the readiness the tests
    wait on instead of a sleep)."""
    return sum(w._in_flight for w in pool.workers.values())  # type: ignore[attr-defined]

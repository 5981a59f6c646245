"""The swarm: every way a worker can break its channel, under every start method and face.

Each attack runs from a one-worker hostile pool beside an honest pool kept busy by
callers that check every answer. After each attack: the hostile worker ended with the
outcome and reason of what it did, the pool is back to full strength and answers, and
at the end no fd of the supervisor's, no zombie and no process a worker left behind
remains.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from tests.supervisor.swarm_workers import ORPHAN, Swarm
from tests.supervisor.util import CALC, METHODS, PRELOAD, eventually, run, zombie_children
from tests.supervisor.workers import Calc
from warden.supervisor import Supervisor, SyncSupervisor, WorkerDied
from warden.supervisor.events import Event, Exited
from warden.supervisor.pool import DeadlineExceeded, Pool, RestartPolicy
from warden.supervisor.sandbox import Outcome

SWARM = "tests.supervisor.swarm_workers:SwarmImpl"
SWARM_PRELOAD = (*PRELOAD, "tests.supervisor.swarm_workers")
RESTART = RestartPolicy("on-failure", backoff=0.01, max_backoff=0.02, crash_loop_limit=1000)
HUNG_UP = "the worker closed its channel while its process kept running (the channel ended first)"
NOT_AWAITED = r".*reply to request id \d+, which is not awaiting a reply"
DEADLINE = 1.5  # only the hostile calls that hang have one: they end by it


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def orphans() -> list[int]:
    """Live processes a hostile worker left behind (named ORPHAN), anywhere on the host."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/comm", "rb") as f:
                if f.read().strip() != ORPHAN:
                    continue
            with open(f"/proc/{p}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                    continue
        except OSError:
            continue
        out.append(int(p))
    return out


@dataclass(frozen=True)
class Attack:
    what: str
    arg: int = 0
    outcome: Outcome | None = None  # None: the call is answered (`answer`) and nothing dies
    also: Outcome | None = None  # another outcome it may end with (whichever comes first)
    reason: str | None = None  # a regular expression the whole reason must match
    answer: int | None = None  # the call's own answer, when it gets one
    deadline: bool = False  # it hangs: only its deadline ends it
    then: bool = False  # the worker dies at its next call (answered by another worker)


ATTACKS = [
    Attack("reply_twice", outcome=Outcome.BAD_MESSAGE, answer=7, reason=NOT_AWAITED),
    Attack("reply_unknown", outcome=Outcome.BAD_MESSAGE, reason=NOT_AWAITED),
    Attack("reply_flood", outcome=Outcome.BAD_MESSAGE, reason=NOT_AWAITED),
    Attack("reply_fds", outcome=Outcome.BAD_MESSAGE,
           reason=r".*expected 0 fds in the reply, got 3"),
    Attack("reply_wrong_method", outcome=Outcome.BAD_MESSAGE,
           reason=r".*reply carries method id 0x[0-9a-f]+, but request \d+ called act"),
    # It exits on its own when its serving loop reads the end, unless the supervisor's
    # next send (EPIPE) comes first: that call never left, another worker answers it.
    Attack("shutdown_rd", outcome=Outcome.EXITED, also=Outcome.BAD_MESSAGE, answer=1,
           then=True),
    Attack("dup2_hang_up", outcome=Outcome.TIMEOUT, deadline=True,
           reason=r"call act\(\) exceeded its 1\.5s deadline"),
    Attack("orphan_exit", 3, outcome=Outcome.EXITED),
    Attack("orphan_exit", 0, outcome=Outcome.EXITED,
           reason="the worker exited with code 0 during a call; the supervisor had not "
                  "asked it to end"),
    Attack("daemon_exit", 4, outcome=Outcome.EXITED),
    Attack("daemon", answer=0),
    Attack("exit", 125, outcome=Outcome.EXITED),
    Attack("exit", 0, outcome=Outcome.EXITED),
]
STOPS = [Attack("sigstop"), Attack("raise_sigstop")]


class Load:
    """Callers keeping an honest pool busy until stopped; every answer is checked."""

    def __init__(self, pool: Pool[Calc], callers: int = 6) -> None:
        self.pool = pool
        self.stop = False
        self.answered = 0
        self.wrong: list[object] = []
        self.tasks = [asyncio.ensure_future(self._caller(i)) for i in range(callers)]

    async def _caller(self, seed: int) -> None:
        n = seed
        while not self.stop:
            n = (n * 7 + 1) % 1000
            try:
                got = await self.pool.call("square", n, deadline=120)
            except Exception as e:  # every failure of an honest call is a test failure
                self.wrong.append(e)
                await asyncio.sleep(0.01)  # a pool that fails at once must not spin the loop
                continue
            if got != n * n:
                self.wrong.append((n, got))
            self.answered += 1

    async def finish(self) -> None:
        before = self.answered
        await eventually(lambda: self.answered > before + 20, "honest calls still answered")
        self.stop = True
        await asyncio.gather(*self.tasks)
        assert self.wrong == []


def ended(events: list[Event], wid: str) -> list[Exited]:
    return [e for e in events if isinstance(e, Exited) and e.worker_id == wid]


async def attack_pool(pool: Pool[Swarm], a: Attack, events: list[Event]) -> list[str]:
    """Run attack `a` on the pool's one worker; what went wrong (empty: all held)."""
    (w,) = pool.workers.values()
    restarts = pool.restarts
    wrong: list[str] = []
    try:
        got: object = await pool.call("act", a.what, a.arg,
                                      deadline=DEADLINE if a.deadline or a.outcome is None
                                      else None)
    except (WorkerDied, DeadlineExceeded) as e:
        got = e
    if a.answer is not None:
        if got != a.answer:
            wrong.append(f"answered {got!r}, expected {a.answer!r}")
    elif a.outcome is Outcome.TIMEOUT:
        if not isinstance(got, DeadlineExceeded):
            wrong.append(f"got {got!r}, expected DeadlineExceeded")
    elif a.outcome is not None and not isinstance(got, WorkerDied):
        wrong.append(f"got {got!r}, expected WorkerDied")
    if a.then:  # the worker dies at its next call, which another worker answers
        got = await pool.call("square", 12, deadline=60)
        if got != 144:
            wrong.append(f"the next call was answered {got!r}")
    if a.outcome is None:
        if not w.alive or pool.restarts != restarts:
            wrong.append(f"an honest-looking worker was replaced ({w.status})")
        return wrong
    st = await w.wait()
    if st.outcome not in (a.outcome, a.also):
        wrong.append(f"outcome {st.outcome.value} ({st.reason}), expected {a.outcome.value}")
    if a.what in ("exit", "orphan_exit", "daemon_exit") and st.returncode != a.arg:
        wrong.append(f"exit code {st.returncode}, expected {a.arg}")
    if a.reason is not None and not re.fullmatch(a.reason, st.reason or ""):
        wrong.append(f"reason {st.reason!r} does not match {a.reason!r}")
    if isinstance(got, WorkerDied) and got.status is not st and got.status != st:
        wrong.append(f"the call's WorkerDied says {got.status}, the worker ended {st}")
    if not await pool.full(60):
        wrong.append("the pool did not come back to full strength")
    elif await pool.call("square", 9, deadline=60) != 81:
        wrong.append("the replacement answered wrong")
    if len(ended(events, w.id)) != 1:
        wrong.append(f"{len(ended(events, w.id))} Exited events for {w.id}")
    return wrong


async def swarm(method: str, attacks: list[Attack]) -> None:
    events: list[Event] = []
    async with Supervisor(start_method=method, zygote_preload=SWARM_PRELOAD) as s:
        s.subscribe(events.append)
        honest = await s.pool(Calc, CALC, size=2, profile="python-worker")
        hostile = await s.pool(Swarm, SWARM, size=1, profile="default", restart=RESTART)
        fds = open_fds()
        load = Load(honest)
        failures = []
        for a in attacks:
            wrong = await attack_pool(hostile, a, events)
            failures += [f"{a.what}({a.arg}): {w}" for w in wrong]
        await load.finish()
        await hostile.aclose()
        await honest.aclose()
        await eventually(lambda: not orphans(), "no process a worker left behind lives")
        await eventually(lambda: open_fds() <= fds, "the killed workers' fds are closed")
        assert zombie_children() == []
        assert failures == []


@pytest.mark.parametrize("method", METHODS)
def test_swarm_of_channel_attacks_in_a_pool(method: str) -> None:
    run(swarm(method, ATTACKS))


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_that_stops_itself_is_ended_by_its_deadline(method: str) -> None:
    """SIGSTOP from the worker itself: ignored by a namespace's init (zygote, fork),
    or the worker stops (spawn) and its deadline kills it; either way the pool serves."""
    async def main() -> None:
        async with Supervisor(start_method=method, zygote_preload=SWARM_PRELOAD) as s:
            hostile = await s.pool(Swarm, SWARM, size=1, profile="default", restart=RESTART)
            for what in ("sigstop", "raise_sigstop"):
                (w,) = hostile.workers.values()
                try:
                    got: object = await hostile.call("act", what, deadline=DEADLINE)
                except DeadlineExceeded as e:
                    got = e
                if got != 1:
                    assert isinstance(got, DeadlineExceeded), got
                    st = await w.wait()
                    assert st.outcome is Outcome.TIMEOUT, st
                    assert await hostile.full(60)
                assert await hostile.call("square", 5, deadline=60) == 25
            await hostile.aclose()
            assert zombie_children() == []
    run(main())


@pytest.mark.parametrize("face", ["remote", "wait_for", "timeout", "taskgroup", "sync"])
def test_forged_replies_through_every_face(face: str) -> None:
    """A reply to a call never made, and a second reply, through spawn()+remote, a pool
    call its caller cancelled (wait_for, asyncio.timeout, a TaskGroup) and the sync face."""
    if face == "sync":
        with SyncSupervisor(start_method="zygote", zygote_preload=SWARM_PRELOAD) as ss:
            pool = ss.pool(Swarm, SWARM, size=1, profile="default", restart=RESTART)
            for what in ("reply_unknown", "reply_fds"):
                with pytest.raises(WorkerDied) as died:
                    pool.call("act", what)
                assert died.value.status is not None
                assert died.value.status.outcome is Outcome.BAD_MESSAGE
                assert ss._run(pool.pool.full(60))
                assert pool.call("square", 4) == 16
            (w,) = pool.pool.workers.values()
            assert pool.call("act", "reply_twice") == 7
            assert ss._run(w.wait()).outcome is Outcome.BAD_MESSAGE  # at its second reply
            assert ss._run(pool.pool.full(60))
            assert [pool.call("square", i) for i in range(5)] == [i * i for i in range(5)]
        return

    async def main() -> None:
        async with Supervisor(zygote_preload=SWARM_PRELOAD) as s:
            # Listeners' rings are kept for reuse (sandbox.notify): count once two ran.
            warm = [await s.spawn(Swarm, SWARM, profile="default") for _ in range(2)]
            for w in warm:
                await w.terminate()
            fds = open_fds()
            if face == "remote":
                for what in ("reply_unknown", "reply_twice", "reply_fds"):
                    w = await s.spawn(Swarm, SWARM, profile="default")
                    other = await s.spawn(Swarm, SWARM, profile="default")
                    try:
                        got: object = await w.remote.act(what)
                    except WorkerDied as e:
                        got = e
                    st = await w.wait()
                    assert st.outcome is Outcome.BAD_MESSAGE, (what, st)
                    assert got == 7 if what == "reply_twice" else isinstance(got, WorkerDied)
                    assert await other.remote.square(3) == 9
                    await other.terminate()
                await eventually(lambda: open_fds() <= fds, "no fd left behind")
                return
            pool = await s.pool(Swarm, SWARM, size=2, profile="default", restart=RESTART)
            for what in ("reply_unknown", "reply_fds", "reply_twice"):
                victim = cancelled_call(pool, what)
                await cancel(victim, face)
                await eventually(lambda: pool.restarts >= 1, "the forger was replaced")
                assert await pool.full(60)
                assert await asyncio.gather(*(pool.call("square", i) for i in range(10))) == \
                    [i * i for i in range(10)]
                pool.restarts = 0
            await pool.aclose()
            await eventually(lambda: open_fds() <= fds, "no fd left behind")
            assert zombie_children() == []
    run(main())


def cancelled_call(pool: Pool[Swarm], what: str) -> Callable[[], Awaitable[object]]:
    """The call: its worker forges its reply 300 ms later, after its caller gave up."""
    return lambda: pool.call("act", what, 300)


async def cancel(make: Callable[[], Awaitable[object]], face: str) -> None:
    """Run the call made by `make` and cancel it while it runs, the way `face` does."""
    if face == "wait_for":
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(make(), 0.05)
    elif face == "timeout":
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await make()
    else:
        async def fail() -> None:
            await asyncio.sleep(0.05)
            raise LookupError("a sibling failed")

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(make())
                tg.create_task(fail())
        except ExceptionGroup as group:
            assert group.subgroup(LookupError) is not None

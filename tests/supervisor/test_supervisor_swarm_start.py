"""Start failures: a worker that never gets ready, or floods its output or its channel
before it is, is cut off (by its ready timeout at the latest), recorded with why, leaves
nothing running, and the supervisor and its pools carry on."""

from __future__ import annotations

import pytest

from tests.supervisor.swarm_workers import Swarm
from tests.supervisor.util import CALC, METHODS, PRELOAD, children, eventually, run
from tests.supervisor.workers import Calc
from warden.supervisor import Supervisor
from warden.supervisor.core import SpawnError
from warden.supervisor.events import Event, Exited
from warden.supervisor.sandbox import Outcome

SWARM_PRELOAD = (*PRELOAD, "tests.supervisor.swarm_workers")
SW = "tests.supervisor.swarm_workers"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("target", "said"), [
    ("NeverReady", "not ready within 1s"),
    ("FloodsBeforeReady", "not ready within 1s"),
    ("ChannelFloodBeforeReady", "the worker sent something before HELLO"),
])
def test_a_start_that_never_ends_is_cut_off(method: str, target: str, said: str,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    events: list[Event] = []

    async def main() -> None:
        async with Supervisor(start_method=method, zygote_preload=SWARM_PRELOAD) as s:
            s.subscribe(events.append)
            honest = await s.pool(Calc, CALC, size=1, profile="python-worker")
            before = children()
            with pytest.raises(SpawnError) as info:
                await s.spawn(Swarm, f"{SW}:{target}", profile="default", worker_id="slow",
                              ready_timeout=1.0)
            assert said in str(info.value)
            st = info.value.status
            assert st is not None and st.outcome is Outcome.SETUP_ERROR
            ends = [e for e in events if isinstance(e, Exited) and e.worker_id == "slow"]
            assert len(ends) == 1 and said in (ends[0].status.reason or "")
            await eventually(lambda: children() <= before, "the cut-off worker is gone")
            assert await honest.call("square", 6) == 36
            w = await s.spawn(Calc, CALC)
            assert await w.remote.square(5) == 25

    run(main())
    out, err = capfd.readouterr()
    assert "WARNING:warden.supervisor:worker w1" not in out + err

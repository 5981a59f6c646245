"""Invariant 1 with valid traffic: workers that flood the supervisor with well-formed
one-way messages, or spin on the CPU, never starve their siblings.

The measure is work done, never time: every honest call completes with the right
answer while the flood demonstrably runs (the host counted the flooders' messages
before and after the honest work), and the supervisor still serves afterwards.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.supervisor.flood_workers import FloodHostImpl
from tests.supervisor.util import CALC, PRELOAD, run
from tests.supervisor.workers import Calc
from warden.supervisor import Supervisor, WorkerDied
from warden.supervisor.sandbox import Outcome

FLOODER = "tests.supervisor.flood_workers:FloodingCalc"
HONEST_CALLS = 60


@pytest.mark.parametrize("method", ["zygote", "spawn", "fork"])
def test_valid_floods_and_spinners_do_not_starve_siblings(method: str) -> None:
    async def main() -> None:
        host = FloodHostImpl()
        async with Supervisor(start_method=method,
                              zygote_preload=(*PRELOAD, "tests.supervisor.flood_workers")) as s:
            honest = [await s.spawn(Calc, CALC) for _ in range(3)]
            flooders = [await s.spawn(Calc, FLOODER, host=host, profile="python-worker")
                        for _ in range(2)]
            spinner = await s.spawn(Calc, CALC)
            attacks = [asyncio.ensure_future(f.remote.act("flood_valid")) for f in flooders]
            attacks.append(asyncio.ensure_future(spinner.remote.act("spin")))
            # The flood is running before the honest work starts...
            while sum(host.ticks.values()) < 1000 or len(host.ticks) < 2:
                await asyncio.sleep(0.01)
            before = dict(host.ticks)
            for i in range(HONEST_CALLS):
                got = await asyncio.gather(*(w.remote.square(i + k) for k, w in
                                             enumerate(honest)))
                assert got == [(i + k) ** 2 for k in range(len(honest))]
            # ...and still running after it: the siblings were served *during* it.
            assert all(host.ticks[f.id] > before[f.id] for f in flooders), \
                (before, host.ticks)
            for f in (*flooders, spinner):
                f.kill()
            for a in attacks:
                with pytest.raises(WorkerDied):
                    await a
            for f in (*flooders, spinner):
                assert (await f.wait()).outcome is Outcome.KILLED
            # The supervisor and the siblings carried on.
            assert [await w.remote.square(9) for w in honest] == [81] * 3
            assert all(w.alive for w in honest)
    run(main())

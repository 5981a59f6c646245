"""Scale: 200 workers at once with one hostile; 2,000 spawn/kill cycles leave nothing behind."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.supervisor.util import CALC, PRELOAD, eventually, run, zombie_children
from tests.supervisor.workers import Calc
from warden.supervisor import Supervisor, WorkerDied
from warden.supervisor.protections import open_fd_count
from warden.supervisor.sandbox import Outcome


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_200_workers_one_bad_all_others_correct() -> None:
    async def main() -> None:
        async with Supervisor(start_method="zygote", zygote_preload=PRELOAD) as s:
            ws = await asyncio.gather(*(s.spawn(Calc, CALC) for _ in range(200)))
            assert len({w.pid for w in ws}) == 200
            bad = ws[137]

            async def work(i: int) -> list[int]:
                w = ws[i]
                if w is bad:
                    with pytest.raises(WorkerDied):
                        await w.remote.act("bad_frame")
                    return []
                return [await w.remote.square(i + k) for k in range(5)]

            results = await asyncio.gather(*(work(i) for i in range(200)))
            for i, r in enumerate(results):
                assert r == ([] if i == 137 else [(i + k) ** 2 for k in range(5)])
            assert (await bad.wait()).outcome is Outcome.BAD_MESSAGE
            assert sum(1 for w in ws if w.alive) == 199
    run(main())


@pytest.mark.slow
def test_2000_spawn_kill_cycles_leave_fds_children_rss_stable() -> None:
    async def main() -> None:
        async with Supervisor(start_method="zygote", zygote_preload=PRELOAD) as s:
            async def cycle(i: int) -> None:
                w = await s.spawn(Calc, CALC)
                assert await w.remote.square(i % 1000) == (i % 1000) ** 2
                if i % 2:
                    w.kill()
                else:
                    await w.terminate()
                await w.wait()

            for i in range(100):  # warm up caches and allocator pools
                await cycle(i)
            fds0, rss0 = open_fd_count(), rss_bytes()
            for start in range(0, 2000, 4):
                await asyncio.gather(*(cycle(start + k) for k in range(4)))
            await eventually(lambda: open_fd_count() == fds0, "every worker's fds closed")
            assert zombie_children() == []
            assert not s.workers
            growth = rss_bytes() - rss0
            assert growth < 16 << 20, f"RSS grew by {growth >> 20} MiB over 2000 cycles"
    run(main())

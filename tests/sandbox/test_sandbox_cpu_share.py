"""Each sandbox is one CPU group: however many processes it runs, it weighs one process.

Without it every sandbox's own session was an autogroup of its own (this machine
has kernel.sched_autogroup_enabled=1, its processes sit in the root cpu cgroup),
as heavy as the supervisor's whole session: 200 zygote workers spinning left the
supervisor 1/201 of the CPU, and a bad frame waited about 250 ms to be read. The
tests read where the kernel put each process (/proc/PID/cgroup) and what weight
the group has; how much CPU that buys is the benchmark's business
(bench/bench_supervisor.py --only-kill --work burn:20), never a test's.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.sandbox.sandbox_util import MODE, collect, start
from tests.supervisor.workers import Calc
from warden import supervisor
from warden.supervisor.sandbox import limits

CPU_V1 = "/sys/fs/cgroup/cpu"
pytestmark = pytest.mark.skipif(
    MODE != "root", reason="needs root: the cgroup v1 cpu hierarchy is root's on this machine "
    "(as another user a sandbox is a CPU group only in a delegated cgroup v2 subtree)")


def _cpu_cgroup(pid: int) -> str:
    """The cpu hierarchy's path of `pid` (cgroup v1 here)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _hid, ctrls, path = line.split(":", 2)
        if "cpu" in ctrls.split(","):
            return path
    pytest.fail(f"no cpu hierarchy in /proc/{pid}/cgroup")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for tid in os.listdir(f"/proc/{p}/task"):
            kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
            out += [int(k) for k in kids]
            todo += [int(k) for k in kids]
    return out


def test_every_process_of_a_sandbox_is_in_its_one_cpu_group() -> None:
    """A sandbox that forks eight spinning children is still one entity of weight 1024
    (what one ordinary process weighs); the supervisor is not in it; it is removed
    when the sandbox ends."""
    script = "for i in 1 2 3 4 5 6 7 8; do (while :; do :; done) & done; sleep 60"
    box, out, err = start(["/bin/sh", "-c", script], max_procs=32)
    try:
        assert box._limiter.mechanism == "cgroup-v1"
        for _ in range(200):  # until the shell has forked them all
            procs = [box.pid, *_descendants(box.pid)]
            if len(procs) >= 10:
                break
            asyncio.run(asyncio.sleep(0.02))
        assert len(procs) >= 10, procs  # init, sh, 8 spinners (and sleep)
        groups = {_cpu_cgroup(p) for p in procs}
        assert len(groups) == 1, groups
        group = groups.pop()
        assert group != _cpu_cgroup(os.getpid())
        assert os.path.basename(group).startswith("warden-")
        assert Path(f"{CPU_V1}{group}/cpu.shares").read_text().strip() == "1024"
        members = {int(x) for x in Path(f"{CPU_V1}{group}/cgroup.procs").read_text().split()}
        assert set(procs) <= members
    finally:
        box.kill()
        collect(box, out, err)
    assert not os.path.exists(f"{CPU_V1}{group}")


def test_a_sandbox_without_the_cpu_hierarchy_still_starts(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The cpu hierarchy is optional: where it cannot be written (an ordinary user, a
    container), memory and pids cgroups are used as before and nothing fails."""
    real = limits._v1_dirs

    def no_cpu(mounts: dict[str, str], own: dict[str, str]
               ) -> tuple[str, str, str | None] | None:
        found = real(mounts, own)
        return None if found is None else (found[0], found[1], None)

    monkeypatch.setattr(limits, "_v1_dirs", no_cpu)
    box, out, err = start(["/bin/sleep", "60"])
    try:
        assert box._limiter.mechanism == "cgroup-v1"
        assert _cpu_cgroup(box.pid) == _cpu_cgroup(os.getpid())
    finally:
        box.kill()
        assert collect(box, out, err).status.outcome.value == "killed"


def test_a_zygote_pools_workers_share_the_zygotes_one_group() -> None:
    """Forty spinning zygote workers are one CPU entity, not forty sessions: the supervisor
    keeps its share and reads a bad frame among them, and they are all still answering."""
    async def go() -> None:
        async with supervisor.Supervisor(zygote=True,
                                         zygote_preload=["tests.supervisor.workers"]) as sup:
            pool = await sup.pool(Calc, "tests.supervisor.workers:CalcImpl", size=40,
                                  start_method="zygote", profile="python-worker")
            busy = [asyncio.ensure_future(pool.call("act", "burn", 300)) for _ in range(40)]
            await asyncio.sleep(0.1)
            mine = _cpu_cgroup(os.getpid())
            groups = {_cpu_cgroup(w.pid) for w in pool.workers.values()}
            assert len(groups) == 1 and mine not in groups, (groups, mine)
            victim = await sup.spawn(Calc, "tests.supervisor.workers:CalcImpl",
                                     start_method="zygote")
            assert _cpu_cgroup(victim.pid) in groups
            call = asyncio.ensure_future(victim.remote.act("bad_frame"))
            st = await victim.wait()
            assert st.outcome.value == "bad_message", st
            with pytest.raises(supervisor.WorkerDied):
                await call
            assert await asyncio.gather(*busy) == [300] * 40
    asyncio.run(go())

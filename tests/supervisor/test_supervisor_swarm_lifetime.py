"""Invariant 6 against a swarm: when the supervisor is SIGKILLed, nothing its workers
started survives, whatever they did first (a setsid double-forked daemon with its
parent-death signal cleared, a worker that tries to clear its own), under every start
method."""

from __future__ import annotations

import signal
import subprocess

from tests.interpreter import PYTHON, python_env
from tests.supervisor.test_supervisor_swarm_liveness import orphans
from tests.supervisor.util import WORKTREE, eventually, run

_SCRIPT = """
import asyncio, sys
sys.path.insert(0, {root!r})
from warden.supervisor import Supervisor
from tests.supervisor.swarm_workers import Swarm
T = "tests.supervisor.swarm_workers:SwarmImpl"
async def main():
    async with Supervisor(zygote=True, zygote_preload=["tests.supervisor.swarm_workers"]) as s:
        said = []
        for m in ("spawn", "zygote", "fork"):
            w = await s.spawn(Swarm, T, start_method=m, profile="default")
            assert await w.remote.act("daemon") == 0
            said.append(str(await w.remote.act("clear_pdeathsig")))
        print(" ".join(said), flush=True)
        await asyncio.sleep(600)
asyncio.run(main())
"""


def test_supervisor_sigkill_leaves_no_daemon_alive() -> None:
    assert orphans() == []
    proc = subprocess.Popen([PYTHON, "-c", _SCRIPT.format(root=WORKTREE)],
                            stdout=subprocess.PIPE, env=python_env(WORKTREE), cwd="/")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert len(line) == 3, line  # each worker answered (its errno, or 0)
        assert len(orphans()) == 3  # the daemons run
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    async def gone() -> None:
        await eventually(lambda: orphans() == [], "every daemon died with the supervisor")

    run(gone())

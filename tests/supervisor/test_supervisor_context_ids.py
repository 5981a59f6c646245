"""ctx.uid and ctx.gid are the worker's own ids, as the kernel shows them to the supervisor.

A worker's channel is one end of a socketpair the supervisor made, so SO_PEERCRED
names the supervisor: before, every worker's ctx.uid was the supervisor's own (0 as
root), and a handler that trusted it took any worker for root. Invariant 4: identity
comes from the supervisor's record, here the kernel's view of the worker's process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.supervisor.util import CALC, METHODS, PRELOAD, run
from tests.supervisor.workers import Calc, HostImpl
from warden.supervisor import Supervisor


def _ids(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


@pytest.mark.parametrize("method", METHODS)
def test_a_workers_context_carries_its_own_ids_not_the_supervisors(method: str) -> None:
    async def main() -> None:
        async with Supervisor(zygote_preload=PRELOAD) as s:
            hosts = [HostImpl(), HostImpl()]
            workers = [await s.spawn(Calc, CALC, host=h, start_method=method) for h in hosts]
            for w, h in zip(workers, hosts, strict=True):
                assert await w.remote.whoami() == f"{w.id} strict {w.pid}"
                ctx = h.contexts[-1]
                assert (ctx.uid, ctx.gid) == _ids(w.pid)
                if os.geteuid() == 0:  # as root a worker runs as an unprivileged outer uid
                    assert ctx.uid != 0 and ctx.gid != 0
    run(main())

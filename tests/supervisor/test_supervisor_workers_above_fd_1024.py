"""The supervisor starts workers while every new descriptor is numbered past 1024."""

from __future__ import annotations

import pytest

from tests.high_fds import high_fds
from tests.supervisor.util import CALC, METHODS, PRELOAD, run
from tests.supervisor.workers import Calc
from warden.supervisor import Supervisor
from warden.supervisor.sandbox import Outcome

__all__ = ["high_fds"]


@pytest.mark.parametrize("method", METHODS)
def test_workers_start_and_serve_above_fd_1024(high_fds: int, method: str) -> None:
    async def main() -> None:
        async with Supervisor(start_method=method, zygote_preload=PRELOAD) as s:
            w = await s.spawn(Calc, CALC)
            assert await w.remote.square(9) == 81
            st = await w.terminate()
            assert st.outcome is Outcome.OK, st

    run(main())

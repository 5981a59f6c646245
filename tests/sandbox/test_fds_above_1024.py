"""The sandbox API works in a process whose descriptors are numbered past 1024."""

from __future__ import annotations

from sandbox_util import py

from supervisor.sandbox import Outcome
from tests.high_fds import high_fds

__all__ = ["high_fds"]


def test_a_sandbox_starts_and_ends_when_every_new_fd_is_above_1024(high_fds: int) -> None:
    r = py("print('hi')")
    assert r.status.outcome is Outcome.OK, r.status
    assert r.out == "hi\n"
    # And a violation, which goes through the listener's wait, is still observed.
    r = py("import time\ntime.sleep(60)", timeout=0.5)
    assert r.status.outcome is Outcome.TIMEOUT, r.status

"""Workers that flood the supervisor with *valid* traffic or spin the CPU
(test_supervisor_floods.py).

Imported by both sides: the supervisor serves FloodHost, the flooding worker calls it."""

from __future__ import annotations

from typing import Annotated

import msgspec

from tests.supervisor.workers import CalcImpl
from warden import ipc
from warden.supervisor import worker_main

Count = Annotated[int, msgspec.Meta(ge=0, le=1 << 62)]


class FloodHost(ipc.Interface, name="test.FloodHost"):
    """Served by the supervisor; every frame the flooder sends is valid."""

    @ipc.message()
    def tick(self, ctx: ipc.Context, n: Count) -> None:
        raise NotImplementedError


class FloodHostImpl(FloodHost):
    def __init__(self) -> None:
        self.ticks: dict[str, int] = {}

    def tick(self, ctx: ipc.Context, n: int) -> None:
        self.ticks[ctx.peer_id] = self.ticks.get(ctx.peer_id, 0) + 1


class FloodingCalc(CalcImpl):
    """act("flood_valid"): valid one-way messages to the host as fast as it can, forever
    (blocking sends: it floods exactly as fast as the supervisor drains)."""

    def act(self, ctx: ipc.Context, what: str, arg: int = 0) -> int:
        if what != "flood_valid":
            return super().act(ctx, what, arg)
        host = worker_main.host()
        n = 0
        while True:
            host.tick(n)
            n += 1

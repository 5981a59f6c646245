"""The zygote's messages are declared and decoded strictly; a zygote that sends anything
else is treated as misbehaving (killed, the reason recorded), never crashes the supervisor.

The attack stands in for a compromised zygote: the supervisor's end of the zygote's
channel is swapped for a socket the test writes to, the real zygote left running.
"""

from __future__ import annotations

import asyncio
import socket

import msgspec
import pytest

from tests.supervisor.util import CALC, PRELOAD, alive, eventually, run
from tests.supervisor.workers import Calc
from warden.supervisor import Supervisor
from warden.supervisor import zygote_messages as zm
from warden.supervisor.sandbox import Outcome


def test_messages_round_trip() -> None:
    for message in (zm.Ready(), zm.Forked(request=3, pid=7), zm.ForkFailed(request=3, errno=11),
                    zm.Ended(pid=7, wait_status=9)):
        assert zm.from_zygote.decode(zm.encode(message)) == message
    for request in (zm.Fork(request=1), zm.Kill(pid=2)):
        assert zm.to_zygote.decode(zm.encode(request)) == request


@pytest.mark.parametrize("data", [
    msgspec.msgpack.encode({"type": "forked", "request": 1, "pid": 7, "extra": 1}),
    msgspec.msgpack.encode({"type": "forked", "request": 1, "pid": 0}),
    msgspec.msgpack.encode({"type": "ended", "pid": 7, "wait_status": "0"}),
    msgspec.msgpack.encode({"type": "fork", "request": 1}),  # the supervisor's own message
    msgspec.msgpack.encode({"type": "ready", "pid": 1}),
    b"P\x07\x00\x00\x001",  # the old hand-packed record
])
def test_the_supervisor_decodes_the_zygote_strictly(data: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):  # ValidationError is one
        zm.from_zygote.decode(data)


@pytest.mark.parametrize("data", [
    b"\xc1garbage",
    msgspec.msgpack.encode({"type": "forked", "request": 1, "pid": -5}),
    msgspec.msgpack.encode({"type": "ended", "pid": 7, "wait_status": 9, "why": "x"}),
    zm.encode(zm.Ready()),  # well-formed, but no zygote says it twice
])
def test_a_zygote_sending_a_bad_message_is_killed_and_replaced(data: bytes) -> None:
    async def main() -> None:
        async with Supervisor(start_method="zygote", zygote_preload=PRELOAD,
                              zygote_warm=0) as s:
            w = await s.spawn(Calc, CALC)
            client = s._zygote
            assert client is not None
            loop = asyncio.get_running_loop()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            real = client.sock  # kept open: the zygote itself sees nothing
            loop.remove_reader(real.fileno())
            ours.setblocking(False)
            client.sock = ours
            loop.add_reader(ours.fileno(), client._on_readable)
            try:
                theirs.send(data)
                st = await w.wait()
                assert st.outcome is Outcome.KILLED and "zygote" in st.reason, st
                assert client.dead
                status = await loop.run_in_executor(None, client.box.wait)
                assert status is not None and status.outcome is Outcome.BAD_MESSAGE, status
                assert "zygote" in status.reason, status
                await eventually(lambda: not alive(client.box.pid), "the zygote is gone")
                # The supervisor carries on, with a new zygote.
                fresh = await s.spawn(Calc, CALC)
                assert await fresh.remote.square(5) == 25
                assert s._zygote is not client
            finally:
                theirs.close()
                real.close()
    run(main())

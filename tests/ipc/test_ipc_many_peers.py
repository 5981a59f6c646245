"""Several forked children on one trusted loop: the ones that misbehave are cut off with
the right reason, the others finish their conversations, nothing leaks."""

from __future__ import annotations

import asyncio
import os
import socket

from tests.ipc.helpers import HANG_GUARD, open_fds
from tests.ipc.ifaces import Service
from tests.ipc.impls import ServiceImpl
from warden import ipc


def child(sock: socket.socket, behaviour: str) -> None:
    """Runs in the forked child: 100 good calls, with a bad frame in the middle if asked."""
    c = ipc.connect(sock, remote=Service, validate_outgoing=False)
    for i in range(100):
        if i == 50 and behaviour == "garbage":
            c._sock.send(b"\x94\x00\xff\xff")
        if i == 50 and behaviour == "range":
            c.remote.alloc(5000)
        assert c.remote.echo(b"%d" % i) == b"%d" % i
    c.remote.log("done")
    c.close()


def test_bad_children_are_cut_off_and_good_ones_finish() -> None:
    behaviours = ["good", "garbage", "good", "range", "good"]

    async def scenario() -> None:
        before = open_fds()
        impl = ServiceImpl()
        bad: list[ipc.BadMessage] = []
        channels = []
        pids = []
        for n, behaviour in enumerate(behaviours):
            ours, theirs = ipc.channel_pair()
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    ours.close()
                    child(theirs, behaviour)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            theirs.close()
            pids.append(pid)
            channels.append(ipc.attach(
                ours, peer_id=f"child-{n}", serve=impl, granted={"alloc"}, pid=pid,
                on_bad_message=bad.append,
            ))
        reasons = await asyncio.wait_for(
            asyncio.gather(*(ch.wait_closed() for ch in channels)), HANG_GUARD
        )
        codes = []
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
        assert codes == [0, 1, 0, 1, 0], "the bad children saw their channel cut"
        assert reasons[0] is None and reasons[2] is None and reasons[4] is None
        assert isinstance(reasons[1], ipc.BadMessage)
        assert reasons[1].reason == "invalid envelope: Expected `int` >= 0 - at `$[1]`"
        assert isinstance(reasons[3], ipc.BadMessage)
        assert reasons[3].reason == "Expected `int` <= 1024 - at `$.size`"
        assert (reasons[3].peer, reasons[3].method, reasons[3].field) == ("child-3", "alloc",
                                                                          "$.size")
        assert sorted(b.peer for b in bad) == ["child-1", "child-3"]
        assert impl.logs == ["done"] * 3
        assert open_fds() == before

    asyncio.run(scenario())

"""Passing channel endpoints bound to a named interface, and hostile replies to our calls."""

from __future__ import annotations

import asyncio
import threading

import msgspec
import pytest

from tests.ipc.helpers import HANG_GUARD, call, mid, open_fds
from tests.ipc.ifaces import Narrow, Service
from tests.ipc.impls import NarrowImpl, ServiceImpl
from warden import ipc
from warden.ipc.wire import KIND_CALL, KIND_REPLY


def test_child_gets_a_narrower_interface_over_its_channel() -> None:
    """Like Mojo's pending remotes: Service.narrow hands out an endpoint serving Narrow."""

    async def scenario() -> None:
        before = open_fds()
        ours, theirs = ipc.channel_pair()
        impl = ServiceImpl()
        bad: list[ipc.BadMessage] = []
        ch = ipc.attach(ours, peer_id="c", serve=impl, on_bad_message=bad.append)
        result: dict[str, object] = {}

        def child() -> None:
            with ipc.connect(theirs, remote=Service) as c:
                handle = c.remote.narrow()
                assert isinstance(handle, ipc.Remote) and handle.interface is Narrow
                with ipc.connect(handle) as narrow:
                    result["ping"] = narrow.remote.ping(41)
                    # The narrow endpoint only serves Narrow: calling a Service method on
                    # it is an unknown method there, and that channel is cut.
                    narrow._sock.send(call("echo", 2, {"data": b"x"}))
                    result["closed"] = not narrow.serve_one()

        t = threading.Thread(target=child)
        t.start()
        narrow_ch = None
        while t.is_alive() or narrow_ch is None:
            await asyncio.sleep(0.01)
            if impl.narrow_channels:
                narrow_ch = impl.narrow_channels[0]
        t.join()
        assert result == {"ping": 42, "closed": True}
        reason = await asyncio.wait_for(narrow_ch.wait_closed(), HANG_GUARD)
        assert isinstance(reason, ipc.BadMessage)
        assert reason.reason.startswith("unknown method id")
        assert reason.peer == "c/narrow"
        assert not bad, "the main channel is untouched"
        await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        assert open_fds() == before

    asyncio.run(scenario())


def test_receiver_endpoint_requires_matching_implementation() -> None:
    a, b = ipc.channel_pair()
    handle: ipc.Receiver[Narrow] = ipc.Receiver(b.detach(), interface=Narrow)
    with pytest.raises(TypeError, match="expects an implementation of"):
        ipc.connect(handle, serve=ServiceImpl())
    chan = ipc.connect(handle, serve=NarrowImpl())
    a.send(msgspec.msgpack.encode([KIND_CALL, mid("ping", "test.Narrow"), 1, {"n": 1}]))
    assert chan.serve_one()
    assert msgspec.msgpack.decode(a.recv(100)) == [KIND_REPLY, mid("ping", "test.Narrow"), 1, 2]
    chan.close()
    a.close()


def test_unconnected_endpoint_from_a_peer_closes_quietly() -> None:
    """A peer hands over a SEQPACKET socket that is connected to nothing; attaching it
    must not spin or raise in the loop: the new channel just closes."""
    import socket

    async def scenario() -> None:
        before = open_fds()
        dangling = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        handle: ipc.Remote[Narrow] = ipc.Remote(dangling.detach(), interface=Narrow)
        assert ipc.Remote.check(handle.fileno()) is None  # it is the right kind of fd
        ch = ipc.attach(handle.socket(), peer_id="dangling", remote=Narrow)
        assert await asyncio.wait_for(ch.wait_closed(), HANG_GUARD) is None
        with pytest.raises(ipc.ChannelClosed):
            await ch.remote.ping(1)
        assert open_fds() == before

    asyncio.run(scenario())

"""Shared test helpers: fd counting, raw frames, a hostile-peer harness."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from tests.ipc.ifaces import Service, Worker
from tests.ipc.impls import ServiceImpl
from warden import ipc
from warden.ipc.channel import send_frame
from warden.ipc.wire import KIND_CALL, KIND_MESSAGE, KIND_REPLY, method_id

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HANG_GUARD = 60.0  # seconds; only to turn a hang into a failure, never a speed assertion


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def mid(name: str, iface: str = "test.Service") -> int:
    return method_id(iface, name)


def frame(kind: int, method: int, request: int, payload: Any) -> bytes:
    return msgspec.msgpack.encode([kind, method, request, payload])


def call(name: str, rid: int, payload: Any, iface: str = "test.Service") -> bytes:
    return frame(KIND_CALL, mid(name, iface), rid, payload)


def message(name: str, payload: Any, iface: str = "test.Service") -> bytes:
    return frame(KIND_MESSAGE, mid(name, iface), 0, payload)


@dataclass
class Outcome:
    reason: ipc.ChannelError | None
    bad: list[ipc.BadMessage] = field(default_factory=list)
    cut: list[ipc.CutOff] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)


Frames = Iterable[tuple[bytes, list[int]]]
FrameList = list[tuple[bytes, list[int]]]


def run_hostile(
    build: Callable[[], Frames],
    *,
    granted: Iterable[str] = (),
    serve: ipc.Interface | None = None,
    limits: ipc.Limits = ipc.DEFAULT_LIMITS,
    cleanup: Callable[[], object] | None = None,
) -> Outcome:
    """Attach a trusted end, let a raw socket write `build()`'s frames, wait for the cut-off.

    Checks that the trusted side holds no extra fd afterwards and that a bystander peer
    in the same loop still gets answers.
    """

    async def scenario() -> Outcome:
        before = open_fds()
        trusted, evil = ipc.channel_pair()
        ok_ours, ok_theirs = ipc.channel_pair()
        out = Outcome(None)
        ch = ipc.attach(
            trusted, peer_id="evil", serve=serve or ServiceImpl(), granted=granted,
            limits=limits, on_bad_message=out.bad.append, on_cut_off=out.cut.append,
        )
        bystander = ipc.attach(ok_ours, peer_id="good", serve=ServiceImpl())
        for data, fds in build():
            try:
                send_frame(evil, data, fds)
            except OSError:
                pass  # the trusted side may already have closed the channel
            finally:
                for fd in fds:
                    os.close(fd)
        out.reason = await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        evil.setblocking(False)
        try:
            while True:
                got = evil.recv(1 << 20)
                if not got:
                    break
                out.replies.append(got)
        except (BlockingIOError, ConnectionResetError):
            pass
        evil.close()
        client = ipc.connect(ok_theirs, remote=Service)
        echoed = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, client.remote.echo, b"still here"),
            HANG_GUARD,
        )
        assert echoed == b"still here"
        assert not bystander.closed
        client.close()
        await asyncio.wait_for(bystander.wait_closed(), HANG_GUARD)
        if cleanup is not None:  # what a handler deliberately kept
            cleanup()
        leaked = open_fds() - before
        assert not leaked, f"trusted side leaked fds: {leaked}"
        return out

    return asyncio.run(scenario())


def tmpfile(tmp_path: Any, name: str, data: bytes = b"data", flags: int = os.O_RDONLY) -> int:
    path = tmp_path / name
    path.write_bytes(data)
    return os.open(path, flags | os.O_CLOEXEC)


def sock_pair_fd() -> int:
    a, b = socket.socketpair()
    b.close()
    return a.detach()


def hostile_reply(make: Callable[[int], bytes], *, twice: bool = False) -> str:
    """The trusted side calls Worker.square; the peer answers with `make(rid)`."""

    async def scenario() -> str:
        before = open_fds()
        ours, evil = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="evil", remote=Worker)
        pending = asyncio.ensure_future(ch.remote.square(3))
        await asyncio.sleep(0)
        got = await asyncio.get_running_loop().run_in_executor(None, evil.recv, 4096)
        _, method, rid, payload = msgspec.msgpack.decode(got)
        assert (method, payload) == (mid("square", "test.Worker"), {"n": 3})
        evil.send(make(rid))
        if twice:
            evil.send(make(rid))
        reason = await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        if twice:
            assert await pending == 9
        else:
            with pytest.raises(ipc.ChannelClosed):
                await pending
        evil.close()
        assert open_fds() == before
        assert isinstance(reason, ipc.BadMessage)
        return reason.reason

    return asyncio.run(scenario())


def hostile_endpoint_reply(make_fd: Callable[[], int]) -> str:
    """The trusted side calls Service.narrow on a peer that serves Service, badly."""

    async def scenario() -> str:
        before = open_fds()
        ours, evil = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="evil", remote=Service)
        pending = asyncio.ensure_future(ch.remote.narrow())
        await asyncio.sleep(0)
        got = await asyncio.get_running_loop().run_in_executor(None, evil.recv, 4096)
        _, _, rid, _ = msgspec.msgpack.decode(got)
        fd = make_fd()
        send_frame(evil, frame(KIND_REPLY, mid("narrow"), rid, None), [fd])
        os.close(fd)
        reason = await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        with pytest.raises(ipc.ChannelClosed):
            await pending
        evil.close()
        assert open_fds() == before
        assert isinstance(reason, ipc.BadMessage)
        return reason.reason

    return asyncio.run(scenario())

"""Quotas and fairness: a peer that does not read is cut off, a flooding peer does not
starve the others, calls in flight and fds held are bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from tests.ipc.helpers import HANG_GUARD, FrameList, call, message, open_fds, run_hostile
from tests.ipc.ifaces import Service, Worker
from tests.ipc.impls import ServiceImpl
from warden import ipc
from warden.ipc.channel import send_frame


class SlowService(ServiceImpl):
    """echo never finishes: calls stay in flight."""

    async def echo(self, ctx: ipc.Context, data: bytes) -> bytes:  # type: ignore[override]
        await asyncio.Event().wait()
        return data


def test_peer_that_never_reads_is_cut_off_not_waited_for() -> None:
    async def scenario() -> None:
        before = open_fds()
        ours, silent = ipc.channel_pair()
        cut: list[ipc.CutOff] = []
        limits = ipc.Limits(max_send_queue_bytes=64 * 1024)
        ch = ipc.attach(ours, peer_id="silent", remote=Worker, limits=limits,
                        on_cut_off=cut.append)
        pending = []
        sent = 0
        while not ch.closed:
            pending.append(asyncio.ensure_future(ch.remote.square(sent)))
            await asyncio.sleep(0)  # lets the call be sent; never blocks on the peer
            sent += 1
            assert sent < 100_000, "the sender should have been cut off long ago"
        reason = await ch.wait_closed()
        assert isinstance(reason, ipc.CutOff)
        assert reason.limit in ("max_send_queue_bytes", "max_send_queue_frames")
        assert cut == [reason]
        results = await asyncio.wait_for(
            asyncio.gather(*pending, return_exceptions=True), HANG_GUARD
        )
        assert all(isinstance(r, ipc.ChannelClosed) for r in results)
        silent.close()
        assert open_fds() == before

    asyncio.run(scenario())


def test_send_queue_frame_limit() -> None:
    async def scenario() -> ipc.ChannelError | None:
        ours, silent = ipc.channel_pair()
        limits = ipc.Limits(max_send_queue_frames=5)
        ch = ipc.attach(ours, peer_id="silent", remote=Service, limits=limits)
        for _ in range(100_000):  # the kernel buffer (~200 KiB) fills first, then our queue
            try:
                ch.remote.log("x")
            except ipc.ChannelClosed as e:  # the message that overflowed the queue
                assert "send queue over 5 frames" in str(e)
                break
        silent.close()
        return await ch.wait_closed()

    reason = asyncio.run(scenario())
    assert isinstance(reason, ipc.CutOff)
    assert reason.reason == "peer does not read: send queue over 5 frames"


def test_calls_in_flight_quota() -> None:
    limits = ipc.Limits(max_calls_in_flight=3)
    frames: FrameList = [(call("echo", i, {"data": b"x"}), []) for i in range(1, 6)]
    out = run_hostile(lambda: frames, serve=SlowService(), limits=limits)
    assert isinstance(out.reason, ipc.CutOff)
    assert out.reason.reason == "more than 3 calls in flight"
    assert out.cut == [out.reason] and not out.bad


class HoardingService(ServiceImpl):
    """Keeps every file it is given (a handler bug the quota protects against)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[ipc.ReadFile] = []

    def read_file(self, ctx: ipc.Context, f: ipc.ReadFile) -> bytes:
        self.kept.append(f)
        return b""


def test_fds_held_quota(tmp_path: Any) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    impl = HoardingService()
    limits = ipc.Limits(max_fds_held=4)
    frames: Callable[[], FrameList] = lambda: [  # noqa: E731
        (call("read_file", i, {}), [os.open(path, os.O_RDONLY | os.O_CLOEXEC)])
        for i in range(1, 8)
    ]
    out = run_hostile(frames, serve=impl, limits=limits,
                      cleanup=lambda: [h.close() for h in impl.kept])  # type: ignore[func-returns-value]
    assert isinstance(out.reason, ipc.CutOff)
    assert out.reason.reason == "more than 4 received fds held open"
    assert len(impl.kept) == 4


def test_closing_handles_frees_the_quota(tmp_path: Any) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    limits = ipc.Limits(max_fds_held=2)

    async def scenario() -> None:
        ours, theirs = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="p", serve=ServiceImpl(), limits=limits)
        c = ipc.connect(theirs, remote=Service)

        def many() -> list[bytes]:
            out = []
            for _ in range(10):
                with open(path, "rb") as f:
                    out.append(c.remote.read_file(f))
            return out

        got = await asyncio.get_running_loop().run_in_executor(None, many)
        assert got == [b"x"] * 10
        assert not ch.closed
        c.close()
        await ch.wait_closed()

    asyncio.run(scenario())


def test_flooding_child_does_not_starve_others() -> None:
    """A forked child floods valid one-way messages forever; two other peers in the same
    loop still complete many round trips while it floods."""

    async def scenario() -> None:
        flood_ours, flood_theirs = ipc.channel_pair()
        impl = SlowLogService()
        logs = impl.logs
        flood = ipc.attach(flood_ours, peer_id="flood", serve=impl)
        pid = os.fork()
        if pid == 0:
            try:
                frame = message("log", {"line": "x" * 100})
                while True:
                    send_frame(flood_theirs, frame)
            finally:
                os._exit(0)
        flood_theirs.close()
        try:
            clients = []
            for name in ("a", "b"):
                ours, theirs = ipc.channel_pair()
                ipc.attach(ours, peer_id=name, serve=ServiceImpl())
                clients.append(ipc.connect(theirs, remote=Service))
            loop = asyncio.get_running_loop()

            def talk(c: ipc.Channel) -> int:
                return sum(len(c.remote.echo(b"ping")) for _ in range(200))

            while logs.total < 1000:  # the flood is really flowing
                await asyncio.sleep(0.01)
            done = await asyncio.wait_for(
                asyncio.gather(*(loop.run_in_executor(None, talk, c) for c in clients)),
                HANG_GUARD,
            )
            assert done == [800, 800]
            assert not flood.closed, "flooding with valid messages is allowed; it just waits"
            seen_during = logs.total
            assert seen_during > 1000
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for c in clients:
            c.close()
        await asyncio.wait_for(flood.wait_closed(), HANG_GUARD)

    asyncio.run(scenario())


class SlowLogService(ServiceImpl):
    """Each message costs the trusted side ~50 µs: the flooder out-produces the reader, so
    without the per-wakeup read bound the flood would hold the loop forever."""

    def __init__(self) -> None:
        super().__init__()
        self.logs: _CountingList = _CountingList()

    def log(self, ctx: ipc.Context, line: str) -> None:
        time.sleep(50e-6)
        self.logs.append(line)


class _CountingList(list[str]):
    """Counts appends without keeping a million strings."""

    total = 0

    def append(self, item: str) -> None:
        self.total += 1


class RecordingService(ServiceImpl):
    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.order = order

    def log(self, ctx: ipc.Context, line: str) -> None:
        self.order.append(ctx.peer_id)


def test_reads_per_wakeup_are_bounded_so_backlogs_interleave() -> None:
    """Two peers with a full backlog each: the loop never handles more than
    max_reads_per_wakeup frames of one peer before turning to the other."""

    async def scenario() -> list[str]:
        order: list[str] = []
        peers = []
        for name in ("a", "b"):
            ours, theirs = ipc.channel_pair()
            for _ in range(100):
                send_frame(theirs, message("log", {"line": name}))
            peers.append((ipc.attach(ours, peer_id=name, serve=RecordingService(order),
                                     limits=ipc.Limits(max_reads_per_wakeup=8)), theirs))
        while len(order) < 200:
            await asyncio.sleep(0)
        for ch, theirs in peers:
            theirs.close()
            await ch.wait_closed()
        return order

    order = asyncio.run(scenario())
    runs = [len(list(g)) for _, g in __import__("itertools").groupby(order)]
    assert max(runs) <= 8
    assert len(runs) >= 200 // 8


class StuckLogService(ServiceImpl):
    """An async one-way handler that never finishes."""

    async def log(self, ctx: ipc.Context, line: str) -> None:  # type: ignore[override]
        await asyncio.Event().wait()


def test_one_way_messages_to_async_handlers_are_bounded_too() -> None:
    limits = ipc.Limits(max_calls_in_flight=5)
    frames: FrameList = [(message("log", {"line": "x"}), []) for _ in range(20)]
    out = run_hostile(lambda: frames, serve=StuckLogService(), limits=limits)
    assert isinstance(out.reason, ipc.CutOff)
    assert out.reason.reason == "more than 5 handlers running"

"""Every type and handle kind round-trips: between threads, and with a real forked child
and a real subprocess that opens its channel from $WARDEN_CHANNEL_FD."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.interpreter import PYTHON, python_env
from tests.ipc.helpers import HANG_GUARD, ROOT, open_fds
from tests.ipc.ifaces import Circle, Color, Narrow, Point, Service, Square, Worker
from tests.ipc.impls import ServiceImpl, WorkerImpl
from warden import ipc


def exercise(c: ipc.Channel, scratch: str) -> dict[str, Any]:
    """Call every Service method from the blocking side; return what came back."""
    r = c.remote
    out: dict[str, Any] = {}
    out["echo"] = r.echo(b"\x00\xffbytes")
    out["echo_big"] = len(r.echo(b"z" * 100_000))
    out["alloc"] = r.alloc(size=1024)
    out["norm"] = r.norm(Point(2.0, 3.0, 6.0))
    out["circle"] = round(r.area(Circle(1.0)), 5)
    out["square"] = r.area(shape=Square(2.0))
    out["mix"] = r.mix("n", Color.GREEN, "w", (1, 2, 3), ["a", "b"], note="hi")
    out["mix_default"] = r.mix("n", Color.RED, "r", (0, 0, 0), [])["note"]
    out["whoami"] = r.whoami()
    r.log("a line")
    path = os.path.join(scratch, "in.txt")
    with open(path, "wb") as f:
        f.write(b"file contents")
    with open(path, "rb") as f:
        out["read_file"] = r.read_file(f)
    with open(os.path.join(scratch, "out.txt"), "wb") as f:
        out["write_file"] = r.write_file(f, data=b"written")  # handle + keyword: bind path
    with open(os.path.join(scratch, "out.txt"), "rb") as f:
        out["written"] = f.read()
    d = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
    out["list_dir"] = r.list_dir(d)
    os.close(d)
    s1, s2 = socket.socketpair()
    r.sock_send(s1, b"over the socket")
    out["socket"] = s2.recv(100)
    s1.close()
    s2.close()
    mem = ipc.SealedMemory.from_bytes(b"\x01" * 10_000)
    out["digest"] = r.digest(mem)
    mem.close()
    with r.open_data() as h:
        assert isinstance(h, ipc.ReadFile)
        out["open_data"] = os.pread(h.fileno(), 100, 0)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    out["adopt"] = r.adopt(theirs)  # we keep `ours` and call Narrow on it
    theirs.close()
    with ipc.connect(ours, remote=Narrow) as adopted:
        out["adopted_ping"] = adopted.remote.ping(9)
    try:
        r.fail("call_failed")
    except ipc.RemoteError as e:
        out["call_failed"] = str(e)
    try:
        r.fail("crash")
    except ipc.RemoteError as e:
        out["crash"] = str(e)
    return out


EXPECTED = {
    "echo": b"\x00\xffbytes",
    "echo_big": 100_000,
    "alloc": 2048,
    "norm": 7.0,
    "circle": 3.14159,
    "square": 4.0,
    "mix": {"name": "n", "color": "green", "mode": "w", "coords": "(1, 2, 3)", "tags": "a,b",
            "note": "'hi'"},
    "mix_default": "None",
    "whoami": "kid:['alloc']:worker-profile",
    "read_file": b"file contents",
    "write_file": 7,
    "written": b"written",
    "list_dir": ["in.txt", "out.txt"],
    "socket": b"over the socket",
    "digest": 4096 + 10_000,
    "open_data": b"served data",
    "adopt": "adopted",
    "adopted_ping": 10,
    "call_failed": "nope: not allowed today",
    "crash": "internal error",
}


def serve_peer(
    run_child: Callable[[socket.socket, str], Callable[[], dict[str, Any] | None]],
    tmp_path: Any,
) -> tuple[dict[str, Any] | None, ServiceImpl, int]:
    """Trusted side in a loop; `run_child` starts the other end and returns a waiter."""
    data = tmp_path / "served.txt"
    data.write_bytes(b"served data")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    impl = ServiceImpl(str(data))

    async def scenario() -> tuple[dict[str, Any] | None, int]:
        before = open_fds()
        ours, theirs = ipc.channel_pair()
        bad: list[ipc.BadMessage] = []
        ch = ipc.attach(
            ours, peer_id="kid", serve=impl, remote=Worker, granted={"alloc"},
            extra={"profile": "worker-profile"}, on_bad_message=bad.append,
        )
        wait = run_child(theirs, str(scratch))
        squared = await asyncio.wait_for(ch.remote.square(12), HANG_GUARD)
        result = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, wait), HANG_GUARD
        )
        await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        for adopted in impl.narrow_channels:  # channels the child handed us
            assert await asyncio.wait_for(adopted.wait_closed(), HANG_GUARD) is None
        assert not bad
        assert ch.close_reason is None
        assert open_fds() == before
        return result, squared

    result, squared = asyncio.run(scenario())
    return result, impl, squared


def test_round_trip_between_threads(tmp_path: Any) -> None:
    def run_child(sock: socket.socket, scratch: str) -> Callable[[], dict[str, Any]]:
        out: dict[str, Any] = {}

        def body() -> None:
            with ipc.connect(sock, serve=WorkerImpl(), remote=Service) as c:
                c.serve_one()  # the trusted side's square(12)
                out.update(exercise(c, scratch))

        t = threading.Thread(target=body)
        t.start()

        def wait() -> dict[str, Any]:
            t.join()
            return out

        return wait

    result, impl, squared = serve_peer(run_child, tmp_path)
    assert result == EXPECTED
    assert impl.logs == ["a line"]
    assert squared == 144


def test_round_trip_with_forked_child(tmp_path: Any) -> None:
    def run_child(sock: socket.socket, scratch: str) -> Callable[[], None]:
        pid = os.fork()
        if pid == 0:  # the child: report by one-way message, exit 0 only if all matched
            code = 1
            try:
                with ipc.connect(sock, serve=WorkerImpl(), remote=Service) as c:
                    c.serve_one()
                    got = exercise(c, scratch)
                    c.remote.log("ok" if got == EXPECTED else f"mismatch {got!r}"[:200])
                    code = 0
            finally:
                os._exit(code)
        sock.close()

        def wait() -> None:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0

        return wait

    _, impl, squared = serve_peer(run_child, tmp_path)
    assert impl.logs == ["a line", "ok"]
    assert squared == 144


CHILD = """
import sys
from warden import ipc
from tests.ipc.ifaces import Service, Worker
from tests.ipc.impls import WorkerImpl
c = ipc.connect_from_env(serve=WorkerImpl(), remote=Service)
c.serve_one()
c.remote.log("pid-ok")
c.serve_forever()
"""


def test_subprocess_opens_channel_from_env(tmp_path: Any) -> None:
    def run_child(sock: socket.socket, scratch: str) -> Callable[[], None]:
        fd = sock.fileno()
        env = {"PYTHONPATH": python_env(ROOT)["PYTHONPATH"], ipc.CHANNEL_FD_ENV: str(fd),
               "PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen([PYTHON, "-c", CHILD], pass_fds=(fd,), env=env)
        sock.close()

        def wait() -> None:
            assert proc.wait() == 0

        return wait

    # The child serves until we close: close from the trusted side once it has logged.
    data = tmp_path / "served.txt"
    data.write_bytes(b"x")
    impl = ServiceImpl(str(data))

    async def scenario() -> None:
        ours, theirs = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="kid", serve=impl, remote=Worker)
        wait = run_child(theirs, "")
        assert await asyncio.wait_for(ch.remote.square(5), HANG_GUARD) == 25
        while not impl.logs:
            await asyncio.sleep(0.01)
        assert ch.context.pid == os.getpid(), "SO_PEERCRED on a socketpair names its creator"
        ch.close()
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, wait), 60)

    asyncio.run(scenario())
    assert impl.logs == ["pid-ok"]


def test_connect_from_env_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ipc.CHANNEL_FD_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"\$WARDEN_CHANNEL_FD is not set"):
        ipc.connect_from_env()
    monkeypatch.setenv(ipc.CHANNEL_FD_ENV, "three")
    with pytest.raises(RuntimeError, match=r"'three' is not an fd number"):
        ipc.connect_from_env()
    with tempfile.TemporaryFile() as f:
        monkeypatch.setenv(ipc.CHANNEL_FD_ENV, str(f.fileno()))
        with pytest.raises(OSError):
            ipc.connect_from_env()


def test_async_handler_and_pid_from_embedder() -> None:
    class AsyncWorker(Worker):
        async def square(self, ctx: ipc.Context, n: int) -> int:  # type: ignore[override]
            await asyncio.sleep(0)
            return n * n + ctx.pid

    async def scenario() -> int:
        ours, theirs = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="p", serve=AsyncWorker(), pid=1000)
        c = ipc.connect(theirs, remote=Worker)
        got = await asyncio.get_running_loop().run_in_executor(None, c.remote.square, 3)
        c.close()
        await ch.wait_closed()
        return int(got)

    assert asyncio.run(scenario()) == 1009


def test_blocking_side_also_rejects_bad_messages() -> None:
    a, b = ipc.channel_pair()
    c = ipc.connect(b, serve=WorkerImpl())
    a.send(b"\x94\x00\x00\x01\xc0")  # [call, method 0, request 1, nil]
    with pytest.raises(ipc.BadMessage, match="unknown method id 0x00000000"):
        c.serve_one()
    assert c.closed
    a.close()


def test_calls_on_a_closed_channel_fail() -> None:
    async def scenario() -> None:
        ours, theirs = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="p", remote=Worker)
        pending = asyncio.ensure_future(ch.remote.square(2))
        await asyncio.sleep(0)
        theirs.close()
        with pytest.raises(ipc.ChannelClosed):
            await asyncio.wait_for(pending, HANG_GUARD)
        with pytest.raises(ipc.ChannelClosed):
            await ch.remote.square(2)

    asyncio.run(scenario())


def test_oversized_outgoing_frame_is_refused_locally_and_channel_survives() -> None:
    limits = ipc.Limits(max_frame_bytes=4096)

    async def scenario() -> None:
        ours, theirs = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="p", serve=BigReplies(), remote=Service, limits=limits)
        c = ipc.connect(theirs, remote=Service, limits=limits)
        loop = asyncio.get_running_loop()
        with pytest.raises(ipc.FrameTooLarge, match=r"test.Service.echo: frame of \d+ bytes"):
            c.remote.echo(b"x" * 5000)
        assert await loop.run_in_executor(None, c.remote.echo, b"small") == b"small"
        with pytest.raises(ipc.RemoteError, match="internal error"):
            await loop.run_in_executor(None, c.remote.echo, b"grow")
        with pytest.raises(ipc.FrameTooLarge):
            await ch.remote.echo(b"y" * 5000)
        assert not ch.closed
        c.close()
        await ch.wait_closed()

    asyncio.run(scenario())


class BigReplies(ServiceImpl):
    def echo(self, ctx: ipc.Context, data: bytes) -> bytes:
        return data * 2000 if data == b"grow" else data


class WrongReplies(ServiceImpl):
    def alloc(self, ctx: ipc.Context, size: int) -> int:
        return "not an int"  # type: ignore[return-value]


def test_validate_outgoing_catches_our_own_mistakes_before_sending() -> None:
    async def scenario() -> None:
        ours, theirs = ipc.channel_pair()
        bad: list[ipc.BadMessage] = []
        ch = ipc.attach(ours, peer_id="p", serve=WrongReplies(), granted={"alloc"},
                        on_bad_message=bad.append)
        c = ipc.connect(theirs, remote=Service)  # validate_outgoing defaults to True
        loop = asyncio.get_running_loop()
        with pytest.raises(ValueError, match=r"test.Service.alloc: invalid arguments: "
                           r"Expected `int` <= 1024 - at `\$.size`"):
            c.remote.alloc(4096)
        with pytest.raises(ipc.RemoteError, match="internal error"):  # the reply was wrong
            await loop.run_in_executor(None, c.remote.alloc, 1)
        assert await loop.run_in_executor(None, c.remote.echo, b"ok") == b"ok"
        assert not bad and not ch.closed
        c.close()
        await ch.wait_closed()

    asyncio.run(scenario())


def test_without_validate_outgoing_the_peer_rejects_it() -> None:
    async def scenario() -> ipc.ChannelError | None:
        ours, theirs = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="p", serve=ServiceImpl(), granted={"alloc"})
        c = ipc.connect(theirs, remote=Service, validate_outgoing=False)
        with pytest.raises(ipc.ChannelClosed):
            await asyncio.get_running_loop().run_in_executor(None, c.remote.alloc, 4096)
        return await ch.wait_closed()

    reason = asyncio.run(scenario())
    assert isinstance(reason, ipc.BadMessage)
    assert reason.reason == "Expected `int` <= 1024 - at `$.size`"


def test_late_reply_after_caller_gave_up_is_dropped_not_fatal() -> None:
    async def scenario() -> None:
        ours, theirs = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="slow", remote=Worker)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ch.remote.square(3), 0.05)
        c = ipc.connect(theirs, serve=WorkerImpl())
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, c.serve_one)  # answers the abandoned call
        second = asyncio.ensure_future(ch.remote.square(4))
        await asyncio.sleep(0)
        assert await loop.run_in_executor(None, c.serve_one)
        assert await asyncio.wait_for(second, HANG_GUARD) == 16
        assert not ch.closed
        c.close()
        await ch.wait_closed()

    asyncio.run(scenario())


class CallsBack(ServiceImpl):
    """Answers `echo` only after calling back into the child that asked."""

    def __init__(self) -> None:
        super().__init__()
        self.channel: Any = None

    async def echo(self, ctx: ipc.Context, data: bytes) -> bytes:  # type: ignore[override]
        squared = await self.channel.remote.square(len(data))
        return data + b":%d" % squared


def test_calls_cross_while_a_blocking_call_waits() -> None:
    """The child's blocking call serves the trusted side's calls that arrive meanwhile,
    including one made by the very handler the child is waiting on."""

    async def scenario() -> list[Any]:
        ours, theirs = ipc.channel_pair()
        impl = CallsBack()
        ch = ipc.attach(ours, peer_id="p", serve=impl, remote=Worker)
        impl.channel = ch
        early = ch.remote.square(5)  # already queued before the child calls
        c = ipc.connect(theirs, serve=WorkerImpl(), remote=Service)
        loop = asyncio.get_running_loop()
        got = await asyncio.wait_for(loop.run_in_executor(None, c.remote.echo, b"abc"),
                                     HANG_GUARD)
        result = [got, await early]
        c.close()
        await ch.wait_closed()
        return result

    assert asyncio.run(scenario()) == [b"abc:9", 25]

"""A peer written only from docs/wire-format.md — plain sockets, hashlib and untyped
msgpack, no `ipc` import on its side — talks to the trusted side: proof that the written
spec is enough for a worker in another language."""

from __future__ import annotations

import array
import asyncio
import hashlib
import os
import socket
from collections.abc import Sequence
from typing import Any

import msgspec

from tests.ipc.helpers import HANG_GUARD, open_fds
from tests.ipc.ifaces import Worker
from tests.ipc.impls import ServiceImpl
from warden import ipc


def spec_method_id(interface: str, method: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{interface}.{method}".encode()).digest()[:4], "big")


class SpecPeer:
    """The other-language worker: serves test.Worker.square, calls test.Service."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.next_id = 1

    def send(self, frame: list[Any], fds: Sequence[int] = ()) -> None:
        data = msgspec.msgpack.encode(frame)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], anc)

    def recv(self) -> tuple[list[Any], list[int]]:
        data, anc, _, _ = self.sock.recvmsg(1 << 17, socket.CMSG_SPACE(8 * 4))
        fds = list(array.array("i", anc[0][2])) if anc else []
        return msgspec.msgpack.decode(data), fds

    def call(self, method: str, params: dict[str, Any], fds: Sequence[int] = ()) -> Any:
        rid = self.next_id
        self.next_id += 1
        self.send([0, spec_method_id("test.Service", method), rid, params], fds)
        while True:
            (kind, mid, got_rid, payload), got_fds = self.recv()
            if kind == 0:  # the trusted side calls us meanwhile: serve test.Worker.square
                assert mid == spec_method_id("test.Worker", "square")
                self.send([2, mid, got_rid, payload["n"] ** 2])
                continue
            assert (mid, got_rid) == (spec_method_id("test.Service", method), rid)
            if kind == 3:
                raise RuntimeError(payload["message"])
            return (payload, got_fds) if got_fds else payload


def test_a_peer_built_from_the_written_spec_interoperates(tmp_path: Any) -> None:
    data_file = tmp_path / "served.txt"
    data_file.write_bytes(b"from the broker")
    impl = ServiceImpl(str(data_file))

    async def scenario() -> dict[str, Any]:
        before = open_fds()
        ours, theirs = ipc.channel_pair()
        bad: list[ipc.BadMessage] = []
        ch = ipc.attach(ours, peer_id="foreign", serve=impl, remote=Worker, granted={"alloc"},
                        on_bad_message=bad.append)
        loop = asyncio.get_running_loop()
        square = ch.remote.square(7)  # goes out first; the peer answers it inside a call

        def peer() -> dict[str, Any]:
            p = SpecPeer(theirs)
            out: dict[str, Any] = {}
            out["echo"] = p.call("echo", {"data": b"\x00bin"})
            out["alloc"] = p.call("alloc", {"size": 12})
            out["norm"] = p.call("norm", {"p": {"x": 3.0, "y": 4.0, "z": 12.0}})
            out["area"] = p.call("area", {"shape": {"type": "square", "side": 3.0}})
            out["mix"] = p.call("mix", {"name": "n", "color": "red", "mode": "r",
                                        "coords": [1, 2, 3], "tags": []})["note"]
            p.send([1, spec_method_id("test.Service", "log"), 0, {"line": "one-way"}])
            with open(data_file, "rb") as f:
                out["read_file"] = p.call("read_file", {}, [f.fileno()])
            value, fds = p.call("open_data", {})
            out["open_data"] = (value, os.pread(fds[0], 100, 0))
            os.close(fds[0])
            try:
                p.call("fail", {"how": "call_failed"})
            except RuntimeError as e:
                out["error"] = str(e)
            p.send([0, spec_method_id("test.Service", "alloc"), p.next_id, {"size": 99999}])
            out["after_bad"] = p.sock.recv(100)  # the trusted side closed the channel
            p.sock.close()
            return out

        out = await asyncio.wait_for(loop.run_in_executor(None, peer), HANG_GUARD)
        out["square"] = await asyncio.wait_for(square, HANG_GUARD)
        reason = await ch.wait_closed()
        assert isinstance(reason, ipc.BadMessage) and bad == [reason]
        out["bad"] = reason.reason
        assert open_fds() == before
        return out

    out = asyncio.run(scenario())
    assert out == {
        "echo": b"\x00bin",
        "alloc": 24,
        "norm": 13.0,
        "area": 9.0,
        "mix": "None",
        "read_file": b"from the broker",
        "open_data": (None, b"from the broker"),
        "error": "nope: not allowed today",
        "after_bad": b"",
        "square": 49,
        "bad": "Expected `int` <= 1024 - at `$.size`",
    }
    assert impl.logs == ["one-way"]

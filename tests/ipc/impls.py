"""Implementations of the test interfaces."""

from __future__ import annotations

import math
import os
from typing import Any

from tests.ipc.ifaces import Circle, Color, Narrow, Point, Service, Shape, Staged, Worker
from warden import ipc


class NarrowImpl(Narrow):
    def ping(self, ctx: ipc.Context, n: int) -> int:
        return n + 1


class ServiceImpl(Service):
    def __init__(self, data_path: str | None = None) -> None:
        self.logs: list[str] = []
        self.data_path = data_path
        self.narrow_channels: list[Any] = []

    def echo(self, ctx: ipc.Context, data: bytes) -> bytes:
        return data

    def alloc(self, ctx: ipc.Context, size: int) -> int:
        return size * 2

    def norm(self, ctx: ipc.Context, p: Point) -> float:
        return math.sqrt(p.x * p.x + p.y * p.y + p.z * p.z)

    def area(self, ctx: ipc.Context, shape: Shape) -> float:
        if isinstance(shape, Circle):
            return math.pi * shape.radius**2
        return shape.side**2

    def mix(
        self, ctx: ipc.Context, name: str, color: Color, mode: str,
        coords: tuple[int, int, int], tags: list[str], note: str | None = None,
    ) -> dict[str, str]:
        return {"name": name, "color": color.value, "mode": mode, "coords": repr(coords),
                "tags": ",".join(tags), "note": repr(note)}

    def whoami(self, ctx: ipc.Context) -> str:
        return f"{ctx.peer_id}:{sorted(ctx.granted)}:{ctx.extra.get('profile')}"

    def log(self, ctx: ipc.Context, line: str) -> None:
        self.logs.append(line)

    def read_file(self, ctx: ipc.Context, f: ipc.ReadFile) -> bytes:
        if os.get_inheritable(f.fileno()):
            raise ipc.CallFailed("received fd is inheritable (MSG_CMSG_CLOEXEC missing)")
        with f.open() as fh:
            data: bytes = fh.read()
            return data

    def write_file(self, ctx: ipc.Context, f: ipc.WriteFile, data: bytes) -> int:
        with f.open() as fh:
            return int(fh.write(data))

    def list_dir(self, ctx: ipc.Context, d: ipc.Directory) -> list[str]:
        with d:
            return sorted(os.listdir(d.fileno()))

    def sock_send(self, ctx: ipc.Context, s: ipc.Socket, data: bytes) -> None:
        with s.socket() as sk:
            sk.sendall(data)

    def digest(self, ctx: ipc.Context, mem: ipc.SealedMemory) -> int:
        with mem, mem.map() as m:
            return sum(m[: min(len(m), 4096)]) + mem.size

    def open_data(self, ctx: ipc.Context) -> ipc.ReadFile:
        assert self.data_path is not None
        return ipc.ReadFile(os.open(self.data_path, os.O_RDONLY | os.O_CLOEXEC))

    def narrow(self, ctx: ipc.Context) -> Any:
        a, b = ipc.channel_pair()
        self.narrow_channels.append(ipc.attach(a, peer_id=ctx.peer_id + "/narrow",
                                               serve=NarrowImpl()))
        return ipc.Remote(b.detach())

    def adopt(self, ctx: ipc.Context, endpoint: ipc.Receiver[Narrow]) -> str:
        """The peer hands us a channel and expects us to serve Narrow on it."""
        assert endpoint.interface is Narrow
        self.narrow_channels.append(
            ipc.attach(endpoint.socket(), peer_id=ctx.peer_id + "/adopted", serve=NarrowImpl())
        )
        return "adopted"

    def fail(self, ctx: ipc.Context, how: str) -> None:
        if how == "call_failed":
            raise ipc.CallFailed("nope: not allowed today")
        raise RuntimeError("secret internal detail")


class StagedImpl(Staged):
    def __init__(self) -> None:
        self.shut = False

    def hello(self, ctx: ipc.Context, version: int) -> str:
        return f"hello v{version}"

    def work(self, ctx: ipc.Context, n: int) -> int:
        return n * 10

    def shutdown(self, ctx: ipc.Context) -> None:
        self.shut = True


class WorkerImpl(Worker):
    def square(self, ctx: ipc.Context, n: int) -> int:
        return n * n

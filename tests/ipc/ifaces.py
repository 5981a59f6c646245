"""Interfaces shared by the ipc tests (module level so annotations resolve)."""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec

from warden import ipc

Size = Annotated[int, msgspec.Meta(ge=0, le=1024)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
Blob = Annotated[bytes, msgspec.Meta(max_length=256 * 1024)]


class Point(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Chromium's example: exactly x, y, z, so a malformed point cannot be expressed."""

    x: float
    y: float
    z: float


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Circle(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="circle"):
    radius: Annotated[float, msgspec.Meta(gt=0)]


class Square(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="square"):
    side: Annotated[float, msgspec.Meta(gt=0)]


Shape = Circle | Square


class Narrow(ipc.Interface, name="test.Narrow"):
    @ipc.call()
    def ping(self, ctx: ipc.Context, n: int) -> int:
        raise NotImplementedError


class Service(ipc.Interface, name="test.Service"):
    """What the trusted side serves to a peer in the tests."""

    @ipc.call()
    def echo(self, ctx: ipc.Context, data: Blob) -> bytes:
        raise NotImplementedError

    @ipc.call(permission="alloc")
    def alloc(self, ctx: ipc.Context, size: Size) -> int:
        raise NotImplementedError

    @ipc.call()
    def norm(self, ctx: ipc.Context, p: Point) -> float:
        raise NotImplementedError

    @ipc.call()
    def area(self, ctx: ipc.Context, shape: Shape) -> float:
        raise NotImplementedError

    @ipc.call()
    def mix(
        self,
        ctx: ipc.Context,
        name: Name,
        color: Color,
        mode: Literal["r", "w"],
        coords: tuple[int, int, int],
        tags: Annotated[list[Name], msgspec.Meta(max_length=4)],
        note: str | None = None,
    ) -> dict[str, str]:
        raise NotImplementedError

    @ipc.call()
    def whoami(self, ctx: ipc.Context) -> str:
        raise NotImplementedError

    @ipc.message()
    def log(self, ctx: ipc.Context, line: Annotated[str, msgspec.Meta(max_length=200)]) -> None:
        raise NotImplementedError

    @ipc.call()
    def read_file(self, ctx: ipc.Context, f: ipc.ReadFile) -> bytes:
        raise NotImplementedError

    @ipc.call()
    def write_file(self, ctx: ipc.Context, f: ipc.WriteFile, data: Blob) -> int:
        raise NotImplementedError

    @ipc.call()
    def list_dir(self, ctx: ipc.Context, d: ipc.Directory) -> list[str]:
        raise NotImplementedError

    @ipc.call()
    def sock_send(self, ctx: ipc.Context, s: ipc.Socket, data: Blob) -> None:
        raise NotImplementedError

    @ipc.call()
    def digest(self, ctx: ipc.Context, mem: ipc.SealedMemory) -> int:
        raise NotImplementedError

    @ipc.call()
    def open_data(self, ctx: ipc.Context) -> ipc.ReadFile:
        raise NotImplementedError

    @ipc.call()
    def narrow(self, ctx: ipc.Context) -> ipc.Remote[Narrow]:
        raise NotImplementedError

    @ipc.call()
    def adopt(self, ctx: ipc.Context, endpoint: ipc.Receiver[Narrow]) -> str:
        raise NotImplementedError

    @ipc.call()
    def fail(self, ctx: ipc.Context, how: Literal["call_failed", "crash"]) -> None:
        raise NotImplementedError


class Staged(ipc.Interface, name="test.Staged", initial_state="new"):
    """hello first, then work (any number of times), then shutdown."""

    @ipc.call(when="new", then="ready")
    def hello(self, ctx: ipc.Context, version: int) -> str:
        raise NotImplementedError

    @ipc.call(when="ready")
    def work(self, ctx: ipc.Context, n: int) -> int:
        raise NotImplementedError

    @ipc.message(when="ready", then="done")
    def shutdown(self, ctx: ipc.Context) -> None:
        raise NotImplementedError


class Worker(ipc.Interface, name="test.Worker"):
    """What a child serves back to the trusted side."""

    @ipc.call()
    def square(self, ctx: ipc.Context, n: int) -> int:
        raise NotImplementedError

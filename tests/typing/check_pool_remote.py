"""Typed pool calls and executor submissions, checked by mypy (tests/typing/test_typing.py),
never run. Everything is reached through the public facade, `import warden`.

`pool.call(Parser.parse, ...)` takes the interface's declared method, so mypy
checks the arguments and the result against the declaration (self and ctx
dropped); the string form `pool.call("parse", ...)` stays untyped.
`warden.SandboxExecutor.submit(fn, ...)` is typed like Executor.submit: the
arguments against fn's, the future's result as fn's return annotation.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

import warden
from warden import SyncSupervisor, ipc

Small = Annotated[int, msgspec.Meta(ge=0, le=1000)]


class Parsed(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lines: int


class Parser(ipc.Interface, name="typing.Parser"):
    @ipc.call()
    def parse(self, ctx: ipc.Context, data: bytes, limit: Small = 10) -> Parsed:
        raise NotImplementedError

    @ipc.call()
    def count(self, ctx: ipc.Context, fd: ipc.ReadFile) -> int:
        raise NotImplementedError


class Other(ipc.Interface, name="typing.Other"):
    @ipc.call()
    def parse(self, ctx: ipc.Context, data: bytes) -> Parsed:
        raise NotImplementedError


async def typed_calls(sup: warden.Supervisor, fd: ipc.ReadFile) -> int:
    pool = await sup.pool(Parser, "myapp.worker:ParserImpl", size=2)
    parsed: Parsed = await pool.call(Parser.parse, b"a\nb")
    again = await pool.call(Parser.parse, b"a", limit=5)
    n: int = await pool.call(Parser.count, fd)
    untyped = await pool.call("parse", b"x", deadline=2.0)  # the string form: Any
    return parsed.lines + again.lines + n + len(untyped)


def count_lines(text: str, limit: int = 10) -> Parsed:
    return Parsed(min(text.count("\n"), limit))


def executor_calls(ex: warden.SandboxExecutor) -> int:
    parsed: Parsed = ex.submit(count_lines, "a\nb").result()
    again = ex.submit(count_lines, "a", limit=3).result()
    return parsed.lines + again.lines


def sync_typed_calls(sup: SyncSupervisor) -> int:
    pool = sup.pool(Parser, "myapp.worker:ParserImpl", size=1)
    return pool.call(Parser.parse, b"x").lines + pool.call(Parser.count, ipc.ReadFile(0))


# Everything below is wrong; test_typing.py checks mypy reports each one on its line.

async def wrong_calls(sup: warden.Supervisor, fd: ipc.ReadFile) -> str:
    pool = await sup.pool(Parser, "myapp.worker:ParserImpl")
    await pool.call(Parser.parse, "text")  # error: str for bytes
    await pool.call(Parser.parse, b"x", limit="5")  # error: str for int
    await pool.call(Parser.count)  # error: fd missing
    await pool.call(Parser.count, fd, 3)  # error: too many arguments
    await pool.call(Other.parse, b"x")  # error: another interface's method
    name: str = await pool.call(Parser.parse, b"x")  # error: the result is Parsed
    return name


def sync_wrong_call(sup: SyncSupervisor) -> None:
    pool = sup.pool(Parser, "myapp.worker:ParserImpl")
    pool.call(Parser.parse, 42)  # error: int for bytes


def executor_wrong_calls(ex: warden.SandboxExecutor) -> int:
    ex.submit(count_lines, b"bytes")  # error: bytes for str
    n: int = ex.submit(count_lines, "x").result()  # error: the result is Parsed
    return n

"""Functions the executor tests submit (preloaded by the workers; see
test_supervisor_executor.py)."""

from __future__ import annotations

import ctypes
import os
import time
from typing import Annotated, Any

import msgspec

Small = Annotated[int, msgspec.Meta(ge=0, le=1 << 20)]


class Point(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    x: int
    y: int


class Loose(msgspec.Struct):
    x: int


def total(numbers: list[int]) -> int:
    return sum(numbers)


def square(n: int) -> Small:
    return n * n


def point(x: int, *, y: int = 0) -> Point:
    return Point(x, y)


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b)


def sleep_then(ms: int, value: int) -> int:
    time.sleep(ms / 1000)
    return value


def identity(value: int) -> int:
    return value


def lies(n: int) -> int:
    """Declares int, returns text: a hostile (or buggy) result."""
    return f"not {n}"  # type: ignore[return-value]


def too_big(n: int) -> Small:
    return 1 << 30


def raises(message: str) -> int:
    raise ValueError(message)


def raises_long() -> int:
    raise RuntimeError("x" * 100_000)


def segfault() -> int:
    ctypes.string_at(0)
    return 0


def exits(code: int) -> int:
    os._exit(code)


def hangs() -> int:
    while True:
        time.sleep(1)


def read_shadow() -> int:
    with open("/etc/shadow", "rb") as f:
        return len(f.read())


def ptrace_parent() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.ptrace(16, 1, 0, 0))  # PTRACE_ATTACH


def whoami() -> tuple[int, int]:
    """(pid, uid) as the worker sees them: pid 1 in its own PID namespace."""
    return (os.getpid(), os.getuid())


def no_annotation(n):  # type: ignore[no-untyped-def]
    return n


def returns_any(n: int) -> Any:
    return n


def returns_object(n: int) -> object:
    return n


def returns_list(n: int) -> list:  # type: ignore[type-arg]
    return [n]


def returns_raw(n: int) -> msgspec.Raw:
    return msgspec.Raw(b"")


def returns_loose(n: int) -> Loose:
    return Loose(n)


_calls = 0


def calls_here() -> int:
    """How many calls this worker process has served (a per-process counter)."""
    global _calls
    _calls += 1
    return _calls

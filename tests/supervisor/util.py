"""Helpers for the supervisor tests: run a coroutine, find processes, the test worker's target."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from warden.supervisor.sandbox import PreflightError

T = TypeVar("T")
WORKTREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CALC = "tests.supervisor.workers:CalcImpl"
METHODS = ("spawn", "zygote", "fork")
PRELOAD = ("tests.supervisor.workers",)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        try:
            return await coro
        except PreflightError as e:  # this machine cannot make user namespaces
            pytest.skip(str(e))

    return asyncio.run(main())


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in (b"Z", b"X")


def children() -> set[int]:
    """Our live children (any thread's)."""
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                out.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return {p for p in out if alive(p)}


def zombie_children() -> list[int]:
    """Our children (any thread's) that have ended and were never reaped."""
    out: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                kids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        out.extend(k for k in kids if not alive(k) and os.path.exists(f"/proc/{k}"))
    return out


async def eventually(check: Callable[[], Any], what: str, tries: int | None = None) -> None:
    """Poll `check` until true (for state that settles asynchronously, e.g. a process exit).

    Unbounded by default: how long it takes is no test's business; a state that never
    comes fails the test at its timeout, in here, with `what` in the traceback."""
    n = 0
    while tries is None or n < tries:
        if check():
            return
        n += 1
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")

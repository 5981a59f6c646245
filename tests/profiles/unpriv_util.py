"""Run a function in a forked child that really is an ordinary uid (4242), report back."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

UID = GID = 4242


def as_unprivileged(cwd: Path, env: dict[str, str], fn: Callable[[], str]) -> str:
    """Run fn in a forked child as uid 4242 with this cwd and environment; return its report."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            os.setgroups([])
            os.setgid(GID)
            os.setuid(UID)
            try:
                report = fn()
            except BaseException as e:  # report anything, so the test shows it
                report = f"raised {type(e).__name__}: {e}"
            os.write(w, report.encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()

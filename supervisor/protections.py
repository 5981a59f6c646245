"""Invariant 1 (the parent's lifetime is its own), one named protection per function.

Each is applied or checked by the Supervisor; tests/supervisor/test_supervisor_hostile.py
attacks each one. Protections that live elsewhere, by design:

- own session, process group, PID namespace of every worker:
  warden.supervisor.sandbox (spawn) and warden.supervisor.confine (zygote, fork);
- seccomp on every worker: the launch filter (sandbox) or the zygote's
  filter, plus the worker's profile loaded in-process (worker_main.lock_down),
  whose refusals the supervisor reads from the worker's own listener;
- non-blocking channels, bounded reads per wakeup, bounded send queues,
  per-peer quotas on calls in flight and fds held: ipc.Limits, enforced by
  ipc.attach; a worker that breaches one is cut off and killed here;
- no zombies: every worker's end is noticed through its pidfd and reaped
  with waitpid on that pid only (never waitpid(-1), which would steal other
  code's children).
"""

from __future__ import annotations

import os
import resource

from warden.supervisor.errors import CapacityError
from warden.supervisor.sandbox import self_confine

__all__ = ["CapacityError", "available_memory", "check_fd_headroom", "check_memory_headroom",
           "check_worker_count", "is_dumpable", "make_non_dumpable", "open_fd_count",
           "raise_fd_limit"]


def make_non_dumpable() -> None:
    """No core dumps of the supervisor, and no ptrace/proc-mem access by same-uid processes."""
    self_confine.set_dumpable(False)


def is_dumpable() -> bool:
    return self_confine.is_dumpable()


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: room for many workers. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd")) - 1


def check_fd_headroom(per_worker: int, headroom: int) -> None:
    """Refuse a spawn that would leave fewer than `headroom` free descriptors."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    free = soft - open_fd_count()
    if free - per_worker < headroom:
        raise CapacityError(f"refusing to start a worker: {free} file descriptors free, "
                            f"{headroom} kept in reserve (RLIMIT_NOFILE {soft})")


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory_headroom(headroom: int) -> None:
    """Refuse a spawn when the machine has less than `headroom` bytes available."""
    avail = available_memory()
    if avail is not None and avail < headroom:
        raise CapacityError(f"refusing to start a worker: {avail >> 20} MiB of memory "
                            f"available, {headroom >> 20} MiB kept in reserve")


def check_worker_count(running: int, limit: int) -> None:
    """A hard cap on live workers: a runaway spawner is refused, not obeyed."""
    if running >= limit:
        raise CapacityError(f"refusing to start a worker: {running} running, the limit is "
                            f"{limit} (Supervisor(max_workers=...))")

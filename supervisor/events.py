"""What the supervisor tells the embedder: one frozen record per event, and a logging record.

Subscribe with `Supervisor.subscribe(callback)` or read `Supervisor.events()`
(an async iterator). Every event is also logged on the `warden.supervisor`
logger: started/restarted at INFO, exited at INFO (ok) or WARNING, bad
messages and seccomp violations at WARNING with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from supervisor.sandbox import Status

logger = logging.getLogger("warden.supervisor")


@dataclass(frozen=True)
class Event:
    worker_id: str
    pid: int | None


@dataclass(frozen=True)
class Started(Event):
    start_method: str
    profile: str


@dataclass(frozen=True)
class Exited(Event):
    status: Status


@dataclass(frozen=True)
class BadMessageEvent(Event):
    """A worker sent an invalid message: it was killed and the message dropped."""

    interface: str | None
    method: str | None
    field: str | None
    reason: str


@dataclass(frozen=True)
class SeccompViolation(Event):
    syscall: str | None  # None when the kernel killed it directly (in-process filter)
    reason: str


@dataclass(frozen=True)
class Restarted(Event):
    pool: str
    replaced: str  # id of the worker it replaces
    attempt: int
    delay: float


def log(event: Event) -> None:
    """One stdlib logging record per event, with the event attached as `extra`."""
    extra = {"warden_event": event}
    if isinstance(event, Started):
        logger.info("worker %s started (pid %s, %s, profile %s)", event.worker_id, event.pid,
                    event.start_method, event.profile, extra=extra)
    elif isinstance(event, Exited):
        level = logging.INFO if event.status.outcome.value in ("ok", "killed") \
            else logging.WARNING
        logger.log(level, "worker %s exited: %s", event.worker_id, event.status.describe(),
                   extra=extra)
    elif isinstance(event, BadMessageEvent):
        logger.warning("worker %s sent a bad message (%s.%s %s): %s; killed", event.worker_id,
                       event.interface, event.method, event.field or "", event.reason,
                       extra=extra)
    elif isinstance(event, SeccompViolation):
        logger.warning("worker %s: %s; killed", event.worker_id, event.reason, extra=extra)
    elif isinstance(event, Restarted):
        logger.info("pool %s: worker %s replaces %s (attempt %d, after %.3gs)", event.pool,
                    event.worker_id, event.replaced, event.attempt, event.delay, extra=extra)

"""What the supervisor tells the embedder: one frozen record per event, and a logging record.

Receive them with `Supervisor.subscribe(callback)`, `Supervisor.event_queue()`
or `async for event in Supervisor.events():`. Every event carries when it
happened twice: `time` (time.time(), wall clock, for logs and other hosts)
and `monotonic` (time.monotonic(), for intervals: immune to clock steps).
Every event is also logged on the `warden.supervisor` logger: started/restarted
at INFO, exited at INFO (ok) or WARNING, bad messages and seccomp violations
at WARNING with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time as _clock
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from warden.ipc.errors import printable
from warden.supervisor.sandbox import Status

logger = logging.getLogger("warden.supervisor")

MAX_CHILD_TEXT = 4096


def child_text(text: str, limit: int = MAX_CHILD_TEXT) -> str:
    """Text a child chose (its start failure, ...), fit for a record, an event or an
    error: escaped as ipc quotes a peer's words (`printable`: every character that is
    not printable, line and paragraph separators and bidirectional controls included,
    written as its escape, so a newline reads `\\n`), then at most `limit` characters
    (the end kept: it says most)."""
    quoted = printable(text, len(text))
    if len(quoted) > limit:
        quoted = "…" + quoted[-(limit - 1):]
    return quoted


@dataclass(frozen=True)
class Event:
    worker_id: str
    pid: int | None
    # Stamped by the supervisor when it makes the event (keyword-only, so the
    # subclasses' own fields stay positional).
    time: float = field(default_factory=_clock.time, kw_only=True, compare=False)
    monotonic: float = field(default_factory=_clock.monotonic, kw_only=True, compare=False)


@dataclass(frozen=True)
class Started(Event):
    start_method: str
    profile: str


@dataclass(frozen=True)
class Exited(Event):
    status: Status


@dataclass(frozen=True)
class BadMessageEvent(Event):
    """A worker broke its channel's rules (an invalid message, or closing the channel
    while it ran): it was killed and the message dropped.

    interface and method name what the frame claimed to call; a frame that names
    no method (an invalid envelope, an unknown method id: see `reason`) has
    method None and the worker's own interface.
    """

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


class EventStream:
    """What `Supervisor.events()` returns: an async iterator of the events from its
    creation on, which ends when the supervisor closes (or on `close()`)."""

    def __init__(self, streams: list[EventStream], maxsize: int) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self._streams = streams
        streams.append(self)

    def put(self, event: Event) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a reader that fell behind loses events
            self._queue.put_nowait(event)

    def close(self) -> None:
        """Stop receiving events: the iterator ends after the ones already queued."""
        if self not in self._streams:
            return
        self._streams.remove(self)
        if self._queue.full():  # the end must get through: it replaces the oldest event
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._queue.empty() and self not in self._streams:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event


class EventSink(Protocol):
    """Where the parts of the supervisor (pools, start methods, the handshake) send events."""

    def emit(self, event: Event) -> None: ...


class EventBus:
    """The supervisor's events, fanned out: the log, queues, streams and callbacks."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], object]] = []
        self._queues: list[asyncio.Queue[Event]] = []
        self._streams: list[EventStream] = []

    def subscribe(self, callback: Callable[[Event], object]) -> None:
        self._subscribers.append(callback)

    def queue(self, maxsize: int) -> asyncio.Queue[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._queues.append(q)
        return q

    def stream(self, maxsize: int) -> EventStream:
        return EventStream(self._streams, maxsize)

    def emit(self, event: Event) -> None:
        log(event)
        for q in self._queues:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(event)
        for stream in self._streams:
            stream.put(event)
        for cb in list(self._subscribers):
            try:
                cb(event)
            except Exception:
                logger.exception("event subscriber %r failed", cb)

    def close(self) -> None:
        """End every stream (after the events already queued)."""
        for stream in list(self._streams):
            stream.close()


def describe(status: Status) -> str:
    """Status.describe(), with the reason when that line leaves it out (an exit's)."""
    how = status.describe()
    if status.reason and status.reason not in how:
        how = f"{how} ({status.reason})"
    return how


def log(event: Event) -> None:
    """One stdlib logging record per event, with the event attached as `extra`."""
    extra = {"warden_event": event}
    if isinstance(event, Started):
        logger.info("worker %s started (pid %s, %s, profile %s)", event.worker_id, event.pid,
                    event.start_method, event.profile, extra=extra)
    elif isinstance(event, Exited):
        level = logging.INFO if event.status.outcome.value in ("ok", "killed") \
            else logging.WARNING
        logger.log(level, "worker %s exited: %s", event.worker_id, describe(event.status),
                   extra=extra)
    elif isinstance(event, BadMessageEvent):
        if event.method is not None:
            where = f"{event.interface}.{event.method}" + (f" {event.field}" if event.field
                                                            else "")
        else:
            where = (f"on its {event.interface} channel, no method" if event.interface
                     else "no method")
        logger.warning("worker %s sent a bad message (%s): %s; killed", event.worker_id,
                       where, event.reason, extra=extra)
    elif isinstance(event, SeccompViolation):
        logger.warning("worker %s: %s; killed", event.worker_id, event.reason, extra=extra)
    elif isinstance(event, Restarted):
        logger.info("pool %s: worker %s replaces %s (attempt %d, after %.3gs)", event.pool,
                    event.worker_id, event.replaced, event.attempt, event.delay, extra=extra)

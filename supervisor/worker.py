"""What a worker's own code may ask of the supervisor that started it.

    from warden.supervisor import worker

    class ParserImpl(Parser):
        def parse(self, ctx, name):
            with worker.broker().open_read(f"/srv/in/{name}") as h, h.open() as f:
                return f.read()

Child side, inside the worker's sandbox, under every start method (spawn,
zygote, fork). `broker()` is the typed remote of the explicit broker
(warden.supervisor.broker.explicit.Broker) the supervisor serves to this
worker when it was spawned with `broker=BrokerRules(...)`: `open_read`,
`open_write`, `connect`. A refused request raises `ipc.RemoteError` ("EACCES:
why"; `refusal_errno(e)` reads the errno back) and the worker carries on.
The calls block; the channel is the worker's alone, one call at a time (a
threaded worker takes a lock around them).
"""

from __future__ import annotations

from typing import Any

from warden import ipc
from warden.supervisor import worker_main
from warden.supervisor.broker.explicit import refusal_errno
from warden.supervisor.errors import NotRunning

__all__ = ["broker", "broker_channel", "host", "refusal_errno"]


def host() -> Any:
    """The typed remote of the host interface the supervisor serves to this worker
    (`spawn(host=...)`), or None."""
    return worker_main.host()


def broker_channel() -> ipc.Channel | None:
    """The blocking channel of this worker's broker, or None (spawned without broker=)."""
    return worker_main.broker_channel()


def broker() -> Any:
    """The broker's remote (`.open_read(path)`, `.open_write(path, create=, truncate=,
    append=, read=)`, `.connect(host, port, protocol)`). Raises NotRunning when this
    worker was spawned without `broker=` (or this is not a warden worker)."""
    channel = worker_main.broker_channel()
    if channel is None:
        raise NotRunning("this worker has no broker: the supervisor spawned it without "
                         "broker=BrokerRules(...)")
    return channel.remote

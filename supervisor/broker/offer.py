"""The explicit broker offered to a Python worker by the Supervisor itself.

    w = await sup.spawn(Parser, "app.parser:Impl",
                        broker=BrokerRules.parse(read=["/srv/in"], connect=["10.1.2.3:5432"]))

    # in the worker (warden.supervisor.worker)
    with worker.broker().open_read("/srv/in/data.csv") as h: ...

Parent, outside the sandbox, with the supervisor's privilege. For each worker
spawned with `broker=`, `WorkerBroker`:

1. builds that worker's own `Policy` (prefixes opened, names resolved) before
   the worker exists, so a bad rule fails the spawn, never a running worker;
2. makes a new channel pair and, right after the bootstrap, sends the worker's
   end on the worker's own channel (`send_endpoint`: one `ENDPOINT` datagram
   carrying exactly one fd, read by worker_main before it runs anything the
   target wrote); every start method (spawn, zygote, fork) hands over that
   channel the same way, so the endpoint goes with it;
3. once the worker is ready, attaches our end bound to `Broker` alone, served
   by `BrokerService(policy)`, granting `broker.open` only if the rules name a
   path and `broker.connect` only if they name an address. The channel's
   identity is the supervisor's record of the worker (its id and pid), never
   anything the worker sends.

The channel's own limits are the broker's bounds: at most `BROKER_LIMITS`
calls in flight and fds queued for the worker (one more is a cut-off: the
worker is killed), frames of at most 32 KiB, 16 frames read per wakeup, so a
worker hammering its broker neither starves its siblings nor makes the
supervisor hold more than a fixed number of fds for it. Every decision is an
`AuditRecord` (logged on "warden.broker") and a `BrokerDecision` event,
stamped with the worker's id by the supervisor.
"""

from __future__ import annotations

import array
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from warden import ipc
from warden.supervisor.broker.addresses import AddressRule
from warden.supervisor.broker.explicit import BrokerService
from warden.supervisor.broker.paths import PathRule
from warden.supervisor.broker.policy import AuditRecord, Policy
from warden.supervisor.events import Event

__all__ = ["BROKER_LIMITS", "ENDPOINT", "BrokerDecision", "BrokerRules", "WorkerBroker"]

# The datagram that carries the worker's end of its broker channel (after the bootstrap).
ENDPOINT = b"warden-broker-endpoint"

# A worker's blocking channel has one call in flight; 16 is room for a threaded worker.
BROKER_LIMITS = ipc.Limits(max_frame_bytes=32 * 1024, max_fds_per_frame=1,
                           max_calls_in_flight=16, max_fds_held=1, max_fds_queued=16,
                           max_send_queue_frames=64, max_send_queue_bytes=256 * 1024)


@dataclass(frozen=True)
class BrokerRules:
    """What a worker may ask its broker for: path rules (with their modes) and
    address rules, the same rules `warden run --broker-read/--broker-write/
    --broker-connect` make (`parse` takes exactly those texts)."""

    paths: tuple[PathRule, ...] = ()
    addresses: tuple[AddressRule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(self.paths))
        object.__setattr__(self, "addresses", tuple(self.addresses))
        for p in self.paths:
            if not isinstance(p, PathRule):
                raise TypeError(f"BrokerRules.paths: expected PathRule, got {p!r}")
        for a in self.addresses:
            if not isinstance(a, AddressRule):
                raise TypeError(f"BrokerRules.addresses: expected AddressRule, got {a!r}")

    @classmethod
    def parse(cls, *, read: Iterable[str] = (), write: Iterable[str] = (),
              connect: Iterable[str] = ()) -> BrokerRules:
        """`read`/`write`: `PATH[:links][:fifo][:device]` (read only / read, write,
        create, truncate); `connect`: `HOST:PORT[-PORT][/tcp|/udp]`. ValueError names
        the rule that is wrong."""
        return cls(tuple([PathRule.parse(t) for t in read]
                         + [PathRule.parse(t, write=True) for t in write]),
                   tuple(AddressRule.parse(t) for t in connect))

    @property
    def granted(self) -> frozenset[str]:
        """The broker permissions these rules call for (nothing the rules cannot answer)."""
        return frozenset((["broker.open"] if self.paths else [])
                         + (["broker.connect"] if self.addresses else []))

    def spelled(self) -> list[str]:
        return [r.spelled() for r in self.paths] + [r.spelled() for r in self.addresses]


@dataclass(frozen=True)
class BrokerDecision(Event):
    """One decision of a worker's explicit broker: `record` says what was asked, the
    answer and the rule (its `sandbox` is the worker id, the supervisor's own)."""

    record: AuditRecord


class WorkerBroker:
    """One worker's broker: its policy and both ends of its channel (see the module)."""

    def __init__(self, worker_id: str, rules: BrokerRules,
                 emit: Callable[[Event], None]) -> None:
        self.worker_id = worker_id
        self.rules = rules
        self._emit = emit
        self.pid: int | None = None
        self.channel: ipc.AsyncChannel | None = None
        self.policy = Policy.build(worker_id, paths=rules.paths, addresses=rules.addresses,
                                   on_record=self._on_record)
        try:
            ours, self._theirs = socket.socketpair(
                socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        except BaseException:
            self.policy.close()
            raise
        self._ours: socket.socket | None = ours
        self._theirs_sent = False

    def _on_record(self, record: AuditRecord) -> None:
        self._emit(BrokerDecision(self.worker_id, self.pid, record))

    def send_endpoint(self, channel: socket.socket) -> None:
        """Queue the worker's end on its channel, right behind the bootstrap; our copy
        of it is closed at once (the channel sees end-of-stream only when the worker's
        copy goes)."""
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                   array.array("i", [self._theirs.fileno()]))]
        try:
            channel.sendmsg([ENDPOINT], rights)
        finally:
            self._theirs.close()
            self._theirs_sent = True

    def attach(self, pid: int, extra: dict[str, object],
               on_bad_message: Callable[[ipc.BadMessage], object],
               on_cut_off: Callable[[ipc.CutOff], object]) -> ipc.AsyncChannel:
        """Serve `Broker` on our end, for the worker whose pid the supervisor knows."""
        self.pid = pid
        ours, self._ours = self._ours, None
        assert ours is not None, "WorkerBroker.attach() twice"
        self.channel = ipc.attach(
            ours, peer_id=self.worker_id, serve=BrokerService(self.policy),
            granted=self.rules.granted, extra={**extra, "channel": "broker"}, pid=pid,
            limits=BROKER_LIMITS, on_bad_message=on_bad_message, on_cut_off=on_cut_off)
        return self.channel

    def close(self) -> None:
        """The worker ended (or never started): its channel and the policy's fds go."""
        if self.channel is not None:
            self.channel.close()
        if self._ours is not None:
            self._ours.close()
            self._ours = None
        if not self._theirs_sent:
            self._theirs.close()
            self._theirs_sent = True
        self.policy.close()


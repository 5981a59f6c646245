"""The protocol between the supervisor and the zygote: declared messages, msgpack-encoded.

One message per datagram on the zygote's fd 3 (SOCK_SEQPACKET), each a
tagged msgspec struct, decoded strictly (unknown fields, wrong types, values
out of range: refused), as bootstrap.py does for a worker's first frame:

    zygote -> supervisor  Ready                             started, serving requests
    supervisor -> zygote  Fork(request), fd: channel        fork a worker on that channel
    zygote -> supervisor  Forked(request, pid)              forked (pid in the zygote's namespace)
    zygote -> supervisor  ForkFailed(request, errno)        the fork failed
    supervisor -> zygote  Kill(pid)                         SIGKILL a worker not yet ready
    zygote -> supervisor  Ended(pid, wait_status)           a worker ended (reaped)

The supervisor trusts the zygote no more than it must: a message it cannot
decode is the zygote misbehaving (zygote.ZygoteClient kills its sandbox and
records why), never an exception in the supervisor.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

MAX_MESSAGE_BYTES = 256

Pid = Annotated[int, msgspec.Meta(ge=1, le=(1 << 22))]  # PID_MAX_LIMIT
Request = Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)]


class Ready(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="ready"):
    """The zygote imported what it preloads and serves requests."""


class Fork(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="fork"):
    """Fork a worker serving on the one fd this message carries (its channel)."""

    request: Request  # the supervisor's own key (worker ids are the embedder's)


class Kill(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="kill"):
    """SIGKILL a worker the zygote forked (one whose pidfd we do not hold yet)."""

    pid: Pid


class Forked(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="forked"):
    request: Request
    pid: Pid  # in the zygote's PID namespace


class ForkFailed(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="fork_failed"):
    request: Request
    errno: Annotated[int, msgspec.Meta(ge=1, le=4095)]


class Ended(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="ended"):
    """A worker the zygote forked was reaped; its wait status as waitpid() gave it."""

    pid: Pid
    wait_status: Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]


ToZygote = Fork | Kill
FromZygote = Ready | Forked | ForkFailed | Ended

_encoder = msgspec.msgpack.Encoder()
to_zygote = msgspec.msgpack.Decoder(ToZygote)
from_zygote = msgspec.msgpack.Decoder(FromZygote)


def encode(message: ToZygote | FromZygote) -> bytes:
    return _encoder.encode(message)

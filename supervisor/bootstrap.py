"""What the supervisor tells a new Python worker before it serves: the first frame on fd 3.

The supervisor writes this record into its end of the worker's channel before
the worker exists, so every start method (spawn, zygote, fork) hands over the
same thing the same way. It comes from the trusted side and is read by the
worker while it still runs only trusted code (before its seccomp filter and
before the implementation has seen any input). After it, the worker sends one
`HELLO` datagram; the kernel stamps it with the worker's pid as the
supervisor sees it (SO_PASSCRED), which is how the supervisor learns the host
pid of a worker forked by the zygote.

A worker that cannot start (its module fails to import, its factory raises,
its filter does not load) sends a `StartFailed` record instead of HELLO, with
the end of its traceback, and exits: the supervisor puts that text in the
SpawnError and the event. It is the child's own account, so it is decoded
with a size cap and quoted, never acted on.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

HELLO = b"warden-worker-ready"
MAX_FAILURE_CHARS = 2048
MAX_BOOTSTRAP_BYTES = 48 << 10  # a filter is at most 4096 instructions (32 KiB)


class Bootstrap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    worker_id: str
    target: str  # "package.module:Attribute": an ipc.Interface implementation class/factory
    host_interface: str | None  # "module:Class" the supervisor serves to this worker, or None
    profile: str  # name, for the worker's own record and error messages
    seccomp_filter: bytes  # struct sock_filter[]
    # True: kill actions are SECCOMP_RET_USER_NOTIF; the worker loads the filter with a
    # new listener and sends it to the supervisor with HELLO (zygote and fork workers).
    # False: SECCOMP_RET_KILL_PROCESS (spawn: the sandbox's filter already owns the
    # stack's one listener).
    notify: bool
    rlimits: tuple[tuple[int, int], ...]  # (RLIMIT_*, value): soft = hard
    max_frame_bytes: int = 1 << 17
    # True: right behind this record, one more datagram (broker.offer.ENDPOINT) carries
    # the worker's end of its explicit broker channel (Supervisor.spawn(broker=...)).
    broker: bool = False


def encode(b: Bootstrap) -> bytes:
    return msgspec.msgpack.encode(b)


def decode(data: bytes) -> Bootstrap:
    return msgspec.msgpack.decode(data, type=Bootstrap)


class StartFailed(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="start_failed"):
    """Instead of HELLO: why the worker could not start (the end of its traceback)."""

    error: Annotated[str, msgspec.Meta(max_length=MAX_FAILURE_CHARS)]


_failure_decoder = msgspec.msgpack.Decoder(StartFailed)


def encode_failure(error: str) -> bytes:
    """`error` cut to its last MAX_FAILURE_CHARS characters (the end says most)."""
    if len(error) > MAX_FAILURE_CHARS:
        error = "…" + error[-(MAX_FAILURE_CHARS - 1):]
    return msgspec.msgpack.encode(StartFailed(error=error))


def decode_failure(data: bytes) -> str | None:
    """The error text of a StartFailed record, or None if `data` is not one."""
    try:
        return _failure_decoder.decode(data).error
    except msgspec.MsgspecError:
        return None

"""The trusted context a handler receives: identity from the channel, never from the message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Context:
    """Who is calling, as the side that owns the channel recorded it.

    peer_id: the name the embedder gave this channel (e.g. the child's id).
    granted: the permissions granted to this peer when the channel was attached.
    pid/uid/gid: the peer's credentials: the embedder's own record if it passed one
        (the supervisor passes the worker's pid and the ids the kernel shows for it,
        outside its user namespace), else SO_PEERCRED. Note SO_PEERCRED on a socketpair
        reports the process that created the pair, not the one holding the end.
    extra: embedder-supplied fields (e.g. {"profile": "worker"}), read-only.
    """

    peer_id: str
    granted: frozenset[str]
    pid: int
    uid: int
    gid: int
    interface: str | None
    extra: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

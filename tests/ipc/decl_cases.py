"""Types used by the declaration tests (module level so annotations resolve)."""

from __future__ import annotations

import msgspec


class Open(msgspec.Struct, frozen=True):
    x: int


class Mutable(msgspec.Struct, forbid_unknown_fields=True):
    x: int


class Good(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    inner: list[Open]


class Node(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A recursive struct (a tree): declarations must not recurse forever over it."""

    name: str
    children: list[Node] = []

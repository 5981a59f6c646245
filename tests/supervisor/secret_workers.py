"""A worker that looks for the supervisor's secrets in itself (test_supervisor_secrets.py)."""

from __future__ import annotations

import ctypes
import os
import re
from typing import Annotated

import msgspec

from warden import ipc

Marker = Annotated[str, msgspec.Meta(max_length=64)]
Found = Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=64)]


class Probe(ipc.Interface, name="test.SecretProbe"):
    @ipc.call()
    def in_memory(self, ctx: ipc.Context, marker: Marker) -> Found:
        """Every `marker` + 32 hex digits found in this process's anonymous memory."""
        raise NotImplementedError

    @ipc.call()
    def in_environment(self, ctx: ipc.Context, marker: Marker) -> Found:
        """The same, in os.environ and in the environment block the kernel set up."""
        raise NotImplementedError


def _matches(marker: str, data: bytes) -> list[str]:
    pattern = re.escape(marker.encode()) + rb"([0-9a-f]{32})"
    return sorted({m.group(1).decode() for m in re.finditer(pattern, data)})


class ProbeImpl(Probe):
    def in_memory(self, ctx: ipc.Context, marker: str) -> list[str]:
        # Read in place (a worker is not dumpable, so /proc/self/mem is root's):
        # anonymous memory only (heap, arenas, stack), where a copied secret would
        # sit; file-backed pages could fault past the file's end.
        found: set[str] = set()
        with open("/proc/self/maps") as maps:
            regions = [line.split() for line in maps]
        for fields in regions:
            addresses, perms = fields[0], fields[1]
            path = fields[5] if len(fields) > 5 else ""
            if not perms.startswith("r") or path not in ("", "[heap]", "[stack]"):
                continue
            start, end = (int(a, 16) for a in addresses.split("-"))
            found.update(_matches(marker, ctypes.string_at(start, end - start)))
        return sorted(found)[:64]

    def in_environment(self, ctx: ipc.Context, marker: str) -> list[str]:
        # os.environ, and the block the kernel copied to the top of the stack at exec
        # (what /proc/self/environ shows; that file is root's in a non-dumpable worker).
        ours = "\0".join(f"{k}={v}" for k, v in os.environ.items()).encode()
        found = set(_matches(marker, ours))
        with open("/proc/self/maps") as maps:
            stack = next(line.split()[0] for line in maps if line.rstrip().endswith("[stack]"))
        start, end = (int(a, 16) for a in stack.split("-"))
        found.update(_matches(marker, ctypes.string_at(start, end - start)))
        return sorted(found)[:64]

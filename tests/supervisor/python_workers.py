"""A worker that says which interpreter runs it (for
tests/supervisor/test_supervisor_any_python.py)."""

from __future__ import annotations

import sys
from typing import Annotated

import msgspec

from warden import ipc

Text = Annotated[str, msgspec.Meta(max_length=4096)]


class Which(ipc.Interface, name="test.Which"):
    @ipc.call()
    def interpreter(self, ctx: ipc.Context) -> Text:
        raise NotImplementedError


class WhichImpl(Which):
    def interpreter(self, ctx: ipc.Context) -> str:
        return f"{sys.version} | {sys.base_prefix}"

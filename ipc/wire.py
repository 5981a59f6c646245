"""The wire envelope: what one SEQPACKET frame holds, and how methods are named on the wire.

A frame is one msgpack array ``[kind, method_id, request_id, payload]`` (see
docs/wire-format.md). The payload is kept raw here and decoded by the method's own typed
decoder only after the method, permission and state checks have passed.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Final

import msgspec

KIND_CALL: Final = 0
KIND_MESSAGE: Final = 1
KIND_REPLY: Final = 2
KIND_ERROR: Final = 3
KIND_NAMES: Final = {KIND_CALL: "call", KIND_MESSAGE: "message", KIND_REPLY: "reply",
                     KIND_ERROR: "error"}

MAX_REQUEST_ID: Final = 2**63 - 1
MAX_ERROR_MESSAGE: Final = 1024
# Deepest nesting of arrays/maps a payload may use (a call's parameter map is level 1).
# Declarations that need more are refused; a deeper payload is a bad message. The decoder
# recurses once per level against Python's recursion limit (1000), so without this cap the
# limit would depend on how deep the caller's stack happens to be (~490 levels in practice).
MAX_NESTING: Final = 64
NESTING_REASON: Final = f"nesting deeper than {MAX_NESTING}"


Kind = Annotated[int, msgspec.Meta(ge=0, le=3)]
MethodId = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
RequestId = Annotated[int, msgspec.Meta(ge=0, le=MAX_REQUEST_ID)]
# The outer frame, a fixed-length array; `payload` is decoded later by the method's decoder.
Envelope = tuple[Kind, MethodId, RequestId, msgspec.Raw]


class ErrorPayload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Payload of an error reply: only a bounded message crosses, never a traceback."""

    message: Annotated[str, msgspec.Meta(max_length=MAX_ERROR_MESSAGE)]


ENVELOPE_DECODER: Final = msgspec.msgpack.Decoder(Envelope)
ERROR_DECODER: Final = msgspec.msgpack.Decoder(ErrorPayload)


def method_id(interface: str, method: str) -> int:
    """The 32-bit id of ``interface.method``: first 4 bytes (big-endian) of its SHA-256.

    Derived from names, not declaration order, so reordering or adding methods never
    silently changes what an existing id means; a peer in another language computes it
    the same way.
    """
    digest = hashlib.sha256(f"{interface}.{method}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


_AT = re.compile(r" - at `(\$[^`]*)`$")


def error_field(message: str) -> str | None:
    """The payload path msgspec names in a validation error (``$.size``), if any."""
    match = _AT.search(message)
    if match:
        return match.group(1)
    if message.startswith(("Object missing required field", "Object contains unknown field")):
        return "$"
    return None

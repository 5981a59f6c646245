"""The protocol core, without I/O: turns frames into checked events and calls into frames.

Both front-ends (asyncio and blocking) drive one `Session` per channel. `decode` applies the
checks in a fixed order, each before any user code or payload decoding runs:

    envelope shape → method known → call/message kind → request id order → permission →
    protocol state → calls in flight → fd count → fds held → payload decode → fd kinds

and only then wraps the fds into handles and moves the protocol state. Any failure raises
`BadMessage` or `CutOff` with every fd of the frame already closed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, NoReturn

import msgspec

from warden.ipc.channel import NO_FDS, Carried
from warden.ipc.errors import BadMessage, CutOff, FrameTooLarge, printable
from warden.ipc.handles import FdAccount, Handle, SealedMemory, _Endpoint, fd_to_int
from warden.ipc.interface import HandleParam, Interface, MethodSpec
from warden.ipc.limits import Limits
from warden.ipc.lowlevel import close_all
from warden.ipc.wire import (
    ENVELOPE_DECODER,
    ERROR_DECODER,
    KIND_CALL,
    KIND_ERROR,
    KIND_MESSAGE,
    KIND_REPLY,
    MAX_ERROR_MESSAGE,
    MAX_NESTING,
    MAX_REQUEST_ID,
    NESTING_REASON,
    error_field,
)

_encoder = msgspec.msgpack.Encoder()
_decode_envelope = ENVELOPE_DECODER.decode
_astuple = msgspec.structs.astuple
encode = _encoder.encode

# An incoming event: (kind, spec, request id, value). For calls and messages value is the
# handler's positional argument tuple; for replies the result; for errors the message.
Event = tuple[int, MethodSpec, int, Any]


_CONTAINERS = (msgspec.Struct, list, tuple, dict, set, frozenset)

# A payload path as msgspec writes one: declared field names, indices, `[...]` for dict
# entries. Nothing else (no space, backtick or control character) is a path.
_PATH = re.compile(r"\$(?:\.[^.\[\]`\s]+|\[(?:\d+|\.\.\.)\])*")
_UNKNOWN_FIELD = "Object contains unknown field `"
_KEY_AT = re.compile(r" - at `key` in `(\$[^`]*)`$")


def payload_field(message: str, payload: bytes | memoryview) -> str | None:
    """The path a validation error names (``$.size``), such that the peer cannot forge it.

    msgspec quotes an unknown field's name as the peer sent it, and names no path when the
    field is in the top-level map: a name such as ``x` - at `$.size`` there would read as
    an error at ``$.size`` (and put whatever the peer likes into the record and the log
    line built from it). So an unknown field is attributed to ``$`` when it is a key of the
    top-level map, and whatever is not a path as msgspec writes them is no field at all.
    A dict key that fails is reported at the dict (msgspec: "at `key` in `$.d`").
    """
    if message.startswith(_UNKNOWN_FIELD):
        try:
            top = msgspec.msgpack.decode(payload)
        except Exception:  # not even generic msgpack (too deep, unhashable keys): unattributed
            return None
        if isinstance(top, dict) and any(
            isinstance(k, str) and message == f"{_UNKNOWN_FIELD}{k}`" for k in top
        ):
            return "$"
    key = _KEY_AT.search(message)  # a dict key failed: the field is the dict
    field = key.group(1) if key else error_field(message)
    return field if field is not None and _PATH.fullmatch(field) else None


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether a decoded value nests more than `limit` non-empty arrays/maps.

    Only a recursive type can: any other declaration is refused when deeper than the cap.
    Walks level by level (no recursion), so its cost is one step per decoded container.
    """
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        items: list[Any] = []
        for v in level:
            if isinstance(v, msgspec.Struct):
                items.extend(_astuple(v))
            elif isinstance(v, dict):
                items.extend(v.keys())
                items.extend(v.values())
            else:
                items.extend(v)
        if items and depth > limit:  # an empty container (a default list, say) is a leaf
            return True
        level = [v for v in items if isinstance(v, _CONTAINERS)]
    return False


def _make_handle(param: HandleParam, fd: int, account: FdAccount) -> Handle:
    if issubclass(param.cls, _Endpoint):
        return param.cls(fd, _account=account, interface=param.interface)
    return param.cls(fd, _account=account)


def _check_fd(param: HandleParam, fd: int, limits: Limits) -> str | None:
    try:
        problem = param.cls.check(fd)
        if problem is None and param.cls is SealedMemory:
            # Reading a region faults its pages into *our* memory: bound what a peer can make
            # us hold (a sparse memfd costs the sender nothing).
            size = os.fstat(fd).st_size
            if size > limits.max_sealed_memory_bytes:
                problem = (
                    f"sealed memory of {size} bytes is over the "
                    f"{limits.max_sealed_memory_bytes}-byte limit"
                )
        return problem
    except Exception as e:  # whatever the fd is, failing to inspect it means "wrong kind"
        return f"cannot inspect the fd: {e}"


class Session:
    """Protocol state of one channel end: what we serve, what we call, what is in flight."""

    def __init__(
        self,
        *,
        peer: str,
        serve: type[Interface] | None,
        remote: type[Interface] | None,
        granted: frozenset[str],
        limits: Limits,
        validate_outgoing: bool = False,
    ) -> None:
        self.peer = peer
        self.validate_outgoing = validate_outgoing
        self.serve = serve
        self.remote = remote
        self.granted = granted
        self.limits = limits
        self.account = FdAccount()
        self._by_id: dict[int, MethodSpec] = serve.__ipc_by_id__ if serve else {}
        self.state: str | None = serve.__ipc_initial_state__ if serve else None
        self._last_incoming = 0
        self.calls_in_flight = 0
        self._max_calls = limits.max_calls_in_flight
        self._max_frame = limits.max_frame_bytes
        self._next_request = 1
        self.pending: dict[int, MethodSpec] = {}

    # ---- incoming -------------------------------------------------------------------------

    def _decode(self, decoder: Any, data: bytes | memoryview, fds: Sequence[int],
                spec: MethodSpec | None,
                what: str, *, named: bool = False) -> Any:
        """decoder.decode(data); whatever it refuses is a bad message about `what`
        (a validation error's own sentence stands alone unless `named`)."""
        try:
            return decoder.decode(data)
        except msgspec.ValidationError as e:
            reason = f"invalid {what}: {e}" if named else str(e)
            raise self._bad(fds, reason, spec, payload_field(str(e), data)) from None
        except RecursionError:
            raise self._bad(fds, NESTING_REASON, spec) from None
        except Exception as e:
            raise self._bad(fds, f"invalid {what}: {e}", spec) from None

    def _bad(
        self, fds: Sequence[int], reason: str, spec: MethodSpec | None = None,
        field: str | None = None,
    ) -> BadMessage:
        close_all(fds)
        return BadMessage(
            self.peer, reason,
            interface=spec.interface if spec else (self.serve.__ipc_name__ if self.serve else None),
            method=spec.name if spec else None,
            field=field,
        )

    def decode(self, frame: memoryview | bytes, fds: Sequence[int]) -> Event:
        """Check and decode one frame; on failure every fd in `fds` is closed."""
        try:  # decoded here, not in _decode (one Python call less); a failure decodes again there
            kind, method, rid, payload = _decode_envelope(frame)
        except Exception:
            kind, method, rid, payload = self._decode(ENVELOPE_DECODER, frame, fds, None,
                                                      "envelope", named=True)
        if kind >= KIND_REPLY:
            spec = self.pending.pop(rid, None)
            if spec is None:
                raise self._bad(fds, f"reply to request id {rid}, which is not awaiting a reply")
            if spec.id != method:
                raise self._bad(
                    fds, f"reply carries method id {method:#010x}, but request {rid} called "
                    f"{spec.name}", spec,
                )
            if kind == KIND_REPLY and not fds and spec.plain_result:  # the common reply
                try:  # as the envelope: the refusal's reason comes from _decode
                    return kind, spec, rid, spec.result_decoder.decode(payload)
                except Exception:
                    return kind, spec, rid, self._decode(spec.result_decoder, payload, fds, spec,
                                                         "reply payload")
            return self._decode_reply(kind, spec, rid, payload, fds)
        spec = self._by_id.get(method)
        if spec is None:
            raise self._bad(fds, f"unknown method id {method:#010x}")
        if kind == KIND_CALL:
            if spec.oneway:
                raise self._bad(fds, f"{spec.name} is a one-way message, sent as a call", spec)
            if rid <= self._last_incoming:
                raise self._bad(
                    fds, f"request id {rid} repeated or out of order (last was "
                    f"{self._last_incoming}; ids must increase)", spec,
                )
        else:
            if not spec.oneway:
                raise self._bad(fds, f"{spec.name} is a call, sent as a message", spec)
            if rid != 0:
                raise self._bad(fds, f"one-way message with request id {rid} (must be 0)", spec)
        if spec.guarded:
            self._check_guards(spec, fds)
        if kind == KIND_CALL and self.calls_in_flight >= self._max_calls:
            close_all(fds)
            raise CutOff(
                self.peer, f"more than {self._max_calls} calls in flight",
                limit="max_calls_in_flight",
            )
        if fds or spec.full_params:
            args = self._decode_full(spec, payload, fds)
        else:
            try:  # as the envelope: the refusal's reason comes from _decode
                args = _astuple(spec.params_decoder.decode(payload))
            except Exception:
                args = _astuple(self._decode(spec.params_decoder, payload, fds, spec, "payload"))
        if kind == KIND_CALL:
            self._last_incoming = rid
            self.calls_in_flight += 1
        if spec.then is not None:
            self.state = spec.then
        return kind, spec, rid, args

    def _check_guards(self, spec: MethodSpec, fds: Sequence[int]) -> None:
        if spec.permission is not None and spec.permission not in self.granted:
            raise self._bad(fds, f"permission {spec.permission!r} not granted", spec)
        if spec.when is not None and self.state not in spec.when:
            raise self._bad(
                fds, f"{spec.name} not valid in state {self.state!r} "
                f"(valid in {', '.join(sorted(spec.when))})", spec,
            )

    def _decode_full(
        self, spec: MethodSpec, payload: msgspec.Raw, fds: Sequence[int]
    ) -> tuple[Any, ...]:
        """Arguments with handles, or of a recursive type (measured after decoding)."""
        handles = spec.handles
        if len(fds) != len(handles):
            raise self._bad(fds, f"expected {len(handles)} fds, got {len(fds)}", spec)
        if self.account.held + len(fds) > self.limits.max_fds_held:
            close_all(fds)
            raise CutOff(
                self.peer, f"more than {self.limits.max_fds_held} received fds held open",
                limit="max_fds_held",
            )
        values = _astuple(self._decode(spec.params_decoder, payload, fds, spec, "payload"))
        if spec.params_unbounded and too_deep(values):
            raise self._bad(fds, NESTING_REASON, spec)
        for i, (param, fd) in enumerate(zip(handles, fds, strict=True)):
            problem = _check_fd(param, fd, self.limits)
            if problem is not None:
                raise self._bad(fds, f"fd {i} ({param.name}): {problem}", spec, param.name)
        account = self.account
        wrapped = [_make_handle(p, fd, account) for p, fd in zip(handles, fds, strict=True)]
        return tuple(wrapped[i] if is_h else values[i] for is_h, i in spec.plan)

    def _decode_reply(
        self, kind: int, spec: MethodSpec, rid: int, payload: msgspec.Raw, fds: Sequence[int]
    ) -> Event:
        """The rest of a reply's checks, once `decode` matched it to the pending call `spec`."""
        if kind == KIND_ERROR:
            if fds:
                raise self._bad(fds, f"error reply with {len(fds)} fds (expected none)", spec)
            err = self._decode(ERROR_DECODER, payload, fds, spec, "error reply", named=True)
            # The peer's own words: bounded and escaped like any reason quoting it, since
            # the embedder logs the RemoteError they become.
            return KIND_ERROR, spec, rid, printable(err.message, MAX_ERROR_MESSAGE)
        rh = spec.result_handle
        want = 1 if rh is not None else 0
        if len(fds) != want:
            raise self._bad(fds, f"expected {want} fds in the reply, got {len(fds)}", spec)
        if fds and self.account.held + 1 > self.limits.max_fds_held:
            close_all(fds)
            raise CutOff(
                self.peer, f"more than {self.limits.max_fds_held} received fds held open",
                limit="max_fds_held",
            )
        value = self._decode(spec.result_decoder, payload, fds, spec, "reply payload")
        if spec.result_unbounded and too_deep(value, MAX_NESTING):
            raise self._bad(fds, NESTING_REASON, spec)
        if rh is not None:
            problem = _check_fd(rh, fds[0], self.limits)
            if problem is not None:
                raise self._bad(fds, f"returned fd: {problem}", spec, "return")
            value = _make_handle(rh, fds[0], self.account)
        return KIND_REPLY, spec, rid, value

    # ---- outgoing -------------------------------------------------------------------------

    def remote_spec(self, name: str) -> MethodSpec:
        if self.remote is None:
            raise AttributeError("this channel has no remote interface")
        try:
            return self.remote.__ipc_methods__[name]
        except KeyError:
            raise AttributeError(f"{self.remote.__ipc_name__} has no method {name!r}") from None

    def encode_request(
        self, spec: MethodSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bytes, list[int], int]:
        """Frame a call (registering it as pending) or a one-way message."""
        params: Any
        if spec.handles and not kwargs and len(args) == len(spec.plan):  # all positional
            plan = spec.plan
            fds = [fd_to_int(a) for (is_h, _), a in zip(plan, args, strict=True) if is_h]
            params = spec.params(*[a for (is_h, _), a in zip(plan, args, strict=True) if not is_h])
        elif spec.handles:
            bound = spec.signature.bind(*args, **kwargs)
            handle_names = {h.name for h in spec.handles}
            fds = [fd_to_int(bound.arguments[h.name]) for h in spec.handles]
            params = spec.params(
                **{k: v for k, v in bound.arguments.items() if k not in handle_names}
            )
        else:
            params = spec.params(*args, **kwargs)
            fds = []
        if self.validate_outgoing:
            params = self._validated(
                spec, spec.params_decoder, params, "arguments", spec.params_unbounded
            )
        if spec.oneway:
            data = encode((KIND_MESSAGE, spec.id, 0, params))
            if len(data) >= self._max_frame:
                self._too_large(data, spec)
            return data, fds, 0
        rid = self._next_request
        if rid > MAX_REQUEST_ID:
            raise OverflowError("request ids exhausted on this channel")
        data = encode((KIND_CALL, spec.id, rid, params))
        if len(data) >= self._max_frame:
            self._too_large(data, spec)
        self._next_request = rid + 1
        self.pending[rid] = spec
        return data, fds, rid

    def encode_reply(
        self, spec: MethodSpec, rid: int, value: Any
    ) -> tuple[bytes, Carried]:
        """Frame the reply to an incoming call (and count it as answered).

        A returned handle travels as itself, not as its fd number: the frame keeps it (and
        so its fd) alive until it is sent, even when nothing else references it.
        """
        fds: Carried
        if spec.result_handle is not None:
            fd_to_int(value)  # not an fd: the handler's mistake, reported before anything
            data, fds = encode((KIND_REPLY, spec.id, rid, None)), (value,)
        else:
            if self.validate_outgoing:
                value = self._validated(
                    spec, spec.result_decoder, value, "reply", spec.result_unbounded
                )
            data = encode((KIND_REPLY, spec.id, rid, value))
            if len(data) >= self._max_frame:
                self._too_large(data, spec)
            fds = NO_FDS
        self.calls_in_flight -= 1
        return data, fds

    def _validated(
        self, spec: MethodSpec, decoder: msgspec.msgpack.Decoder[Any], value: Any, what: str,
        unbounded: bool,
    ) -> msgspec.Raw:
        """Check what we are about to send as the peer will, so our mistake fails here."""
        raw = encode(value)
        try:
            decoded = decoder.decode(raw)
        except msgspec.ValidationError as e:
            raise ValueError(f"{spec.qualname}: invalid {what}: {e}") from None
        except RecursionError:
            raise ValueError(f"{spec.qualname}: invalid {what}: {NESTING_REASON}") from None
        if unbounded and too_deep(decoded):
            raise ValueError(f"{spec.qualname}: invalid {what}: {NESTING_REASON}")
        return msgspec.Raw(raw)

    def _too_large(self, data: bytes, spec: MethodSpec) -> NoReturn:
        """Refuse to send a frame the peer must reject (our bug, so the error is ours)."""
        raise FrameTooLarge(
            f"{spec.qualname}: frame of {len(data)} bytes is at or over the "
            f"{self.limits.max_frame_bytes}-byte cap; pass large data as a SealedMemory"
        )

    def encode_error(self, spec: MethodSpec, rid: int, message: str) -> bytes:
        """Frame an error reply to an incoming call (and count it as answered)."""
        self.calls_in_flight -= 1
        return encode((KIND_ERROR, spec.id, rid, {"message": message[:MAX_ERROR_MESSAGE]}))

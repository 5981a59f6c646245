"""Property tests on the sans-IO session: valid messages round-trip; random bytes and
mutations of valid frames never raise anything but BadMessage."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ipc.ifaces import Circle, Color, Point, Service, Square
from warden import ipc
from warden.ipc.session import Session
from warden.ipc.wire import KIND_CALL, KIND_REPLY

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.text(min_size=1, max_size=32)
finite = st.floats(allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)

calls = st.one_of(
    st.tuples(st.just("echo"), st.tuples(st.binary(max_size=2048))),
    st.tuples(st.just("alloc"), st.tuples(st.integers(0, 1024))),
    st.tuples(st.just("norm"), st.tuples(st.builds(Point, finite, finite, finite))),
    st.tuples(
        st.just("area"),
        st.tuples(st.one_of(st.builds(Circle, positive), st.builds(Square, positive))),
    ),
    st.tuples(
        st.just("mix"),
        st.tuples(
            names,
            st.sampled_from(Color),
            st.sampled_from(["r", "w"]),
            st.tuples(
                st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**64 - 1), st.integers(-5, 5)
            ),
            st.lists(names, max_size=4),
            st.none() | st.text(max_size=50),
        ),
    ),
    st.tuples(st.just("log"), st.tuples(st.text(max_size=200))),
)


def pair() -> tuple[Session, Session]:
    client = Session(peer="server", serve=None, remote=Service, granted=frozenset(),
                     limits=ipc.DEFAULT_LIMITS)
    server = Session(peer="client", serve=Service, remote=None, granted=frozenset({"alloc"}),
                     limits=ipc.DEFAULT_LIMITS)
    return client, server


@SETTINGS
@given(calls)
def test_valid_calls_round_trip(case: tuple[str, tuple[Any, ...]]) -> None:
    name, args = case
    client, server = pair()
    spec = client.remote_spec(name)
    data, fds, rid = client.encode_request(spec, args, {})
    kind, got_spec, got_rid, got_args = server.decode(data, fds)
    assert (got_spec, got_rid, got_args) == (spec, rid, args)
    if not spec.oneway:
        assert kind == KIND_CALL
        reply, rfds = server.encode_reply(spec, rid, None if name == "fail" else _result(name))
        kind, _, _, value = client.decode(reply, rfds)
        assert kind == KIND_REPLY and value == _result(name)


def _result(name: str) -> Any:
    return {"echo": b"r", "alloc": 7, "norm": 1.5, "area": 2.5, "mix": {"k": "v"}}[name]


def _only_bad_message(data: bytes) -> None:
    _, server = pair()
    with contextlib.suppress(ipc.BadMessage):
        server.decode(data, [])


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_bad_message(data: bytes) -> None:
    _only_bad_message(data)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    name, args = draw(calls)
    client, _ = pair()
    data, _, _ = client.encode_request(client.remote_spec(name), args, {})
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and buf:
            del buf[pos]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


@SETTINGS
@given(mutated_frames())
def test_mutated_frames_only_raise_bad_message(data: bytes) -> None:
    _only_bad_message(data)


@SETTINGS
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
))
def test_well_formed_msgpack_of_any_shape_only_raises_bad_message(obj: Any) -> None:
    _only_bad_message(msgspec.msgpack.encode(obj))
    for method in ("echo", "alloc", "mix", "log"):
        _only_bad_message(msgspec.msgpack.encode([0, Service.__ipc_methods__[method].id, 1, obj]))

"""Properties of the protocol as a hostile peer drives it across many frames.

- A state machine (hypothesis) plays a peer against a served Session over a real
  SEQPACKET socket pair: calls and messages of the staged interface in any order,
  request ids reused or out of order, replies to calls never made, descriptors
  attached. A model predicts, for each frame, whether the trusted side must accept
  it; the session must agree, and after its first BadMessage the channel is dead.
- "Decoded implies valid": for payloads built near the schema's edges, whatever the
  session accepts satisfies the declaration, checked by predicates written here from
  the declaration, not by the decoder that is under test.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.ipc.helpers import frame, mid
from tests.ipc.ifaces import Service, Staged
from warden import ipc
from warden.ipc.channel import FrameReader, send_frame
from warden.ipc.session import Session
from warden.ipc.wire import KIND_CALL, KIND_MESSAGE, KIND_REPLY

LIMITS = ipc.Limits(max_fds_held=8)
STAGED = "test.Staged"
# Which state each staged method needs, and where it leads (the declaration's when/then).
PROTOCOL = {"hello": ("new", "ready", KIND_CALL), "work": ("ready", None, KIND_CALL),
            "shutdown": ("ready", "done", KIND_MESSAGE)}


def _open_fds() -> set[str]:
    """Open descriptors, less the one os.listdir used to list them (gone by now)."""
    out = set()
    for n in os.listdir("/proc/self/fd"):
        try:
            os.readlink(f"/proc/self/fd/{n}")
        except OSError:
            continue
        out.add(n)
    return out


class HostilePeer(RuleBasedStateMachine):
    """The model: the state the session must be in, the last request id it accepted."""

    def __init__(self) -> None:
        super().__init__()
        self.fds_before = _open_fds()
        self.trusted, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.reader = FrameReader(self.trusted, LIMITS, "peer")
        self.session = Session(peer="peer", serve=Staged, remote=None, granted=frozenset(),
                               limits=LIMITS)
        self.state = "new"
        self.last_rid = 0
        self.dead = False

    def _deliver(self, data: bytes, nfds: int) -> tuple[str, Any]:
        fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(nfds)]
        try:
            send_frame(self.peer, data, fds)
        finally:
            for fd in fds:
                os.close(fd)
        got = None
        try:
            got = self.reader.read()
            assert got is not None
            event = self.session.decode(*got)
        except ipc.BadMessage as e:
            return "bad", e
        except ipc.CutOff as e:
            return "cut", e
        return "ok", event

    def _expect(self, name: str, kind: int, rid: int, nfds: int, payload: Any) -> None:
        need, then, true_kind = PROTOCOL[name]
        outcome, detail = self._deliver(frame(kind, mid(name, STAGED), rid, payload), nfds)
        valid = (kind == true_kind and self.state == need and nfds == 0
                 and (rid > self.last_rid if kind == KIND_CALL else rid == 0)
                 and self.session.calls_in_flight < LIMITS.max_calls_in_flight)
        if valid:
            assert outcome == "ok", detail
            if kind == KIND_CALL:
                self.last_rid = rid
                # Answer it, so calls in flight stay bounded like a served channel's.
                self.session.encode_reply(detail[1], rid, "x" if name == "hello" else 1)
            if then is not None:
                self.state = then
        else:
            assert outcome in ("bad", "cut"), (name, kind, rid, nfds, self.state, detail)
            self.dead = True

    @precondition(lambda self: not self.dead)
    @rule(name=st.sampled_from(sorted(PROTOCOL)), kind=st.sampled_from([KIND_CALL, KIND_MESSAGE]),
          step=st.integers(-2, 3), nfds=st.sampled_from([0, 0, 0, 1, 3]))
    def send(self, name: str, kind: int, step: int, nfds: int) -> None:
        rid = 0 if kind == KIND_MESSAGE and step >= 0 else max(0, self.last_rid + step)
        payload: Any = {"version": 1} if name == "hello" else {"n": 3} if name == "work" else {}
        self._expect(name, kind, rid, nfds, payload)

    @precondition(lambda self: not self.dead)
    @rule(rid=st.integers(0, 1 << 20))
    def reply_to_nothing(self, rid: int) -> None:
        outcome, _ = self._deliver(frame(KIND_REPLY, mid("hello", STAGED), rid, "x"), 0)
        assert outcome == "bad"
        self.dead = True

    @precondition(lambda self: self.dead)
    @rule()
    def after_the_first_bad_frame_nothing_is_held(self) -> None:
        # A served channel stops reading here; what the bad frame carried is closed.
        assert _open_fds() <= self.fds_before | {
            str(self.trusted.fileno()), str(self.peer.fileno())}

    @invariant()
    def session_agrees_with_the_model(self) -> None:
        if not self.dead:
            assert self.session.state == self.state

    def teardown(self) -> None:
        self.trusted.close()
        self.peer.close()
        # Every fd the peer sent was closed, valid frame or not.
        assert _open_fds() == self.fds_before


TestHostilePeer = HostilePeer.TestCase
TestHostilePeer.settings = settings(max_examples=150, stateful_step_count=20, deadline=None)


# ---- decoded implies valid ----------------------------------------------------------------

def _name_ok(v: Any) -> bool:
    return isinstance(v, str) and 1 <= len(v) <= 32


def _float_ok(v: Any) -> bool:
    return isinstance(v, float) and not isinstance(v, bool)


VALID = {
    "echo": lambda a: isinstance(a[0], bytes) and len(a[0]) <= 256 * 1024,
    "alloc": lambda a: type(a[0]) is int and 0 <= a[0] <= 1024,
    "norm": lambda a: all(_float_ok(getattr(a[0], k)) for k in "xyz"),
    "area": lambda a: ((type(a[0]).__name__ == "Circle" and a[0].radius > 0)
                       or (type(a[0]).__name__ == "Square" and a[0].side > 0))
    and not math.isnan(getattr(a[0], "radius", getattr(a[0], "side", math.nan))),
    "mix": lambda a: (_name_ok(a[0]) and a[1].value in ("red", "green") and a[2] in ("r", "w")
                      and isinstance(a[3], tuple) and len(a[3]) == 3
                      and all(type(c) is int for c in a[3]) and isinstance(a[4], list)
                      and len(a[4]) <= 4 and all(_name_ok(t) for t in a[4])
                      and (a[5] is None or isinstance(a[5], str))),
}

# A valid payload per method, and for each field the values a hostile peer would try:
# each bound and one past it, other types, NaN and infinities, unknown keys.
BASE = {"echo": {"data": b"hi"}, "alloc": {"size": 5},
        "norm": {"p": {"x": 1.0, "y": 2.0, "z": 3.0}},
        "area": {"shape": {"type": "circle", "radius": 1.0}},
        "mix": {"name": "n", "color": "red", "mode": "r", "coords": [1, 2, 3], "tags": ["a"],
                "note": None}}
ANY = [None, True, 0, -1, 1.5, math.nan, "", "x", b"x", [], {}, [1], {"x": 1}, 2**63]
NAMES = ["", "a", "a" * 32, "a" * 33, "\x00", "é" * 32, "é" * 33]
FLOATS = [0.0, -0.0, 5e-324, -1.0, 1.0, math.nan, math.inf, -math.inf, 1, True, "1.0"]
CANDIDATES: dict[str, dict[str, list[Any]]] = {
    "echo": {"data": [b"", b"x" * (256 * 1024), "text", *ANY]},
    "alloc": {"size": [0, 1, 1023, 1024, 1025, -1, 2**63 - 1, 1.0, False, *ANY]},
    "norm": {"p": [{"x": f, "y": 0.0, "z": 0.0} for f in FLOATS]
             + [{"x": 1.0, "y": 2.0}, {"x": 1.0, "y": 2.0, "z": 3.0, "w": 4.0}, [1.0, 2.0, 3.0],
                *ANY]},
    "area": {"shape": [{"type": t, k: f} for t in ("circle", "square", "other")
                       for k in ("radius", "side") for f in FLOATS]
             + [{"type": "circle"}, {"radius": 1.0}, {"type": "circle", "radius": 1.0,
                                                       "side": 1.0}, *ANY]},
    "mix": {"name": [*NAMES, *ANY], "color": ["red", "green", "blue", "RED", *ANY],
            "mode": ["r", "w", "rw", "R", *ANY],
            "coords": [[1, 2], [1, 2, 3, 4], [1, 2, 3.0], [2**63, 0, 0], [-(2**63), 0, 0],
                       [True, 0, 0], "123", *ANY],
            "tags": [[], ["a"] * 4, ["a"] * 5, [""], ["a" * 33], [1], *ANY],
            "note": ["", "x" * 1000, *ANY]},
}


def payloads(method: str) -> st.SearchStrategy[Any]:
    """A valid payload with some fields replaced by hostile values, some dropped, and
    now and then an unknown field."""
    fields = CANDIDATES[method]
    changes = st.dictionaries(st.sampled_from(sorted(fields)), st.integers(0, 10**6),
                              max_size=len(fields))

    def build(pick: tuple[dict[str, int], list[str], bool]) -> dict[str, Any]:
        changed, dropped, extra = pick
        out = dict(BASE[method])
        for k, i in changed.items():
            out[k] = fields[k][i % len(fields[k])]
        for k in dropped:
            out.pop(k, None)
        if extra:
            out["unknown"] = 1
        return out

    dropped = st.lists(st.sampled_from(sorted(fields)), max_size=1).filter(
        lambda d: not d or len(d) == 1)
    return st.tuples(changes, st.one_of(st.just([]), st.just([]), dropped),
                     st.sampled_from([False, False, False, True])).map(build)


def test_each_hostile_field_value_alone() -> None:
    """Every candidate, one at a time: decoded only if the declaration allows it."""
    for method, fields in CANDIDATES.items():
        for name, candidates in fields.items():
            for value in candidates:
                _check(method, {**BASE[method], name: value})


def _check(method: str, payload: Any) -> None:
    session = Session(peer="peer", serve=Service, remote=None, granted=frozenset({"alloc"}),
                      limits=LIMITS)
    try:
        data = msgspec.msgpack.encode([KIND_CALL, mid(method), 1, payload])
    except (OverflowError, TypeError):
        return
    try:
        _kind, _spec, _rid, args = session.decode(data, [])
    except ipc.BadMessage:
        return
    assert VALID[method](args), (method, payload, args)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), method=st.sampled_from(sorted(VALID)))
def test_whatever_decodes_satisfies_the_declaration(data: st.DataObject, method: str) -> None:
    _check(method, data.draw(payloads(method)))

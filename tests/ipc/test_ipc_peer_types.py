"""A hostile peer against each kind of annotation a declaration can use.

Declaration side: a type whose decoded value the declaration would not bound (a flag enum
that keeps undefined bits, the bare `ipc.Handle`) or whose decoding a peer can make
quadratic (sets and dict keys it can fill with values of one hash) is refused when the class
is defined. Wire side: a raw peer sends each kind a value it must refuse (no `from __future__
import annotations` here: the declarations are built from parameters at run time).
"""

import datetime
import decimal
import enum
import uuid
from typing import Annotated, Any, Literal, NewType

import msgspec
import pytest

from tests.ipc.helpers import call, mid, run_hostile
from warden import ipc
from warden.ipc.wire import KIND_CALL


def declare_param(ann: Any) -> type[ipc.Interface]:
    def m(self: Any, ctx: ipc.Context, x: ann) -> None:  # type: ignore[valid-type]
        raise NotImplementedError

    return type("Decl", (ipc.Interface,), {"__module__": __name__, "m": ipc.call()(m)},
                name="peer.Decl")


# ---- flag enums ----------------------------------------------------------------------------


class Perm(enum.IntFlag):  # boundary KEEP, IntFlag's default
    READ = 1
    WRITE = 2


class StrictPerm(enum.IntFlag, boundary=enum.STRICT):
    READ = 1
    WRITE = 2


def test_a_flag_enum_that_keeps_undefined_bits_is_refused() -> None:
    # msgspec decodes a flag as Perm(value): with KEEP, 1024 becomes <Perm: 1024>, a value
    # outside every declared member, delivered as if it were checked.
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(1024), type=Perm) == 1024
    with pytest.raises(ipc.InterfaceError) as err:
        declare_param(Perm)
    assert str(err.value) == (
        "peer.Decl.m(x): flag enum Perm accepts undefined bits (boundary keep); declare it "
        "with boundary=enum.STRICT"
    )
    with pytest.raises(ipc.InterfaceError):
        declare_param(list[Perm | None])
    declare_param(StrictPerm)


class Flags(ipc.Interface, name="peer.Flags"):
    @ipc.call()
    def grant(self, ctx: ipc.Context, perm: StrictPerm) -> int:
        raise NotImplementedError


class FlagsImpl(Flags):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def grant(self, ctx: ipc.Context, perm: StrictPerm) -> int:
        self.seen.append(int(perm))
        return int(perm)


def test_a_strict_flag_refuses_undefined_bits_on_the_wire() -> None:
    impl = FlagsImpl()
    out = run_hostile(lambda: [
        (call("grant", 1, {"perm": 3}, iface="peer.Flags"), []),
        (call("grant", 2, {"perm": 1024 | 1}, iface="peer.Flags"), []),
    ], serve=impl)
    assert isinstance(out.reason, ipc.BadMessage)
    assert (out.reason.method, out.reason.field) == ("grant", "$.perm")
    assert out.reason.reason == "Invalid enum value 1025 - at `$.perm`"
    assert impl.seen == [3]


# ---- hashed containers a peer can flood ----------------------------------------------------


class Pair(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    x: int
    y: int


class Named(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    x: int
    name: str


@pytest.mark.parametrize(
    ("ann", "what"),
    [
        (frozenset[uuid.UUID], "a set of UUID"),
        (set[decimal.Decimal], "a set of Decimal"),
        (Annotated[frozenset[uuid.UUID], msgspec.Meta(max_length=8)], "a set of UUID"),
        (dict[uuid.UUID, int], "a dict keyed by UUID"),
        (dict[tuple[int, int], str], "a dict keyed by tuple"),
        (frozenset[tuple[int, float]], "a set of tuple"),
        (frozenset[tuple[int, ...]], "a set of tuple"),
        (frozenset[Pair], "a set of Pair"),
        (dict[frozenset[int], int], "a dict keyed by frozenset"),
        (list[frozenset[tuple[datetime.timedelta, int]]], "a set of tuple"),
        (frozenset[uuid.UUID | int], "a set of UnionType"),
    ],
)
def test_hashed_containers_a_peer_can_fill_with_one_hash_are_refused(
    ann: Any, what: str
) -> None:
    with pytest.raises(ipc.InterfaceError) as err:
        declare_param(ann)
    assert str(err.value) == (
        f"peer.Decl.m(x): {what} is refused: a peer can choose many values with one hash "
        "and make decoding it quadratic, stalling the loop; declare a "
        f"{'list of pairs' if 'dict' in what else 'list'} (or key by str)"
    )


@pytest.mark.parametrize(
    "ann",
    [
        frozenset[int], frozenset[str], frozenset[bytes], set[int | str], frozenset[float],
        dict[str, uuid.UUID], dict[int, str], dict[tuple[int, str], int], frozenset[Named],
        frozenset[datetime.datetime], frozenset[datetime.date], frozenset[StrictPerm],
        list[uuid.UUID], tuple[decimal.Decimal, ...], frozenset[tuple[bool, str]],
    ],
)
def test_hashed_containers_of_keyed_or_narrow_hashes_are_accepted(ann: Any) -> None:
    declare_param(ann)


def _tuple_hash_inverse(a: int, target: int) -> int | None:
    """b such that hash((a, b)) == target on CPython 3.8+ (xxHash-style tuple hash), if an
    int of that hash exists. The mixing is unkeyed and invertible, which is the point."""
    m64 = (1 << 64) - 1
    p1, p2, p5 = 11400714785074694791, 14029467366897019727, 2870177450012600261

    def rotl(x: int) -> int:
        return ((x << 31) | (x >> 33)) & m64

    def rotr(x: int) -> int:
        return ((x >> 31) | (x << 33)) & m64

    acc = (rotl((p5 + (hash(a) & m64) * p2) & m64) * p1) & m64
    want = (target - (2 ^ (p5 ^ 3527539))) & m64  # before the length is mixed in
    lane = ((rotr((want * pow(p1, -1, 1 << 64)) & m64) - acc) * pow(p2, -1, 1 << 64)) & m64
    signed = lane - (1 << 64) if lane >> 63 else lane
    modulus = 2**61 - 1
    if signed in (-1, -2) or abs(signed) >= modulus:
        return None
    return signed  # an int below 2**61-1 in size hashes to itself


def test_the_refused_keys_really_collide() -> None:
    """Why the refusal: thousands of values with one hash, computed, not searched for."""
    modulus = 2**61 - 1  # CPython's numeric hashes are taken modulo this prime
    uuids = {uuid.UUID(int=7 + k * modulus) for k in range(3000)}
    assert len(uuids) == 3000 and len({hash(u) for u in uuids}) == 1
    decimals = [decimal.Decimal(7 + k * modulus) for k in range(3000)]
    assert len({hash(d) for d in decimals}) == 1
    pairs = [(a, b) for a in range(400) if (b := _tuple_hash_inverse(a, 12345)) is not None]
    assert len(pairs) > 50 and {hash(p) for p in pairs} == {12345}


# ---- handles -------------------------------------------------------------------------------


def test_the_bare_handle_base_is_refused() -> None:
    with pytest.raises(ipc.InterfaceError) as err:
        declare_param(ipc.Handle)
    assert str(err.value) == (
        "ipc.Handle accepts an fd of any kind; declare the kind it must be "
        "(ipc.ReadFile, ipc.Directory, ipc.Socket, ...)"
    )


# ---- every kind on the wire ----------------------------------------------------------------

UserId = NewType("UserId", int)
Ratio = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Short = Annotated[str, msgspec.Meta(max_length=8)]


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    LOW = 1


class Opts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Short
    retries: Annotated[int, msgspec.Meta(ge=0, le=3)] = 0
    tags: tuple[Short, ...] = ()


class Kinds(ipc.Interface, name="peer.Kinds"):
    @ipc.call()
    def take(
        self, ctx: ipc.Context,
        ratio: Ratio = 0.5,
        user: UserId = UserId(0),
        small: Annotated[int, msgspec.Meta(ge=-5, le=5)] = 0,
        count: int = 0,
        name: Short = "",
        blob: bytes = b"",
        buf: bytearray = bytearray(),  # noqa: B008 - decoded fresh per call
        mode: Literal["r", "w"] = "r",
        color: Color = Color.RED,
        level: Level = Level.LOW,
        when: datetime.datetime | None = None,
        ident: uuid.UUID | None = None,
        amount: decimal.Decimal | None = None,
        xyz: tuple[int, int, int] = (0, 0, 0),
        many: Annotated[tuple[int, ...], msgspec.Meta(max_length=4)] = (),
        by_id: Annotated[dict[int, Short], msgspec.Meta(max_length=2)] | None = None,
        names: Annotated[frozenset[Short], msgspec.Meta(max_length=4)] = frozenset(),
        opts: Opts | None = None,
    ) -> int:
        raise NotImplementedError


class KindsImpl(Kinds):
    def __init__(self) -> None:
        self.calls = 0

    def take(self, ctx: ipc.Context, *args: Any) -> int:  # type: ignore[override]
        self.calls += 1
        return self.calls


def _mstr(raw: bytes) -> bytes:
    """A MessagePack str holding `raw` as it is (possibly not UTF-8)."""
    return bytes([0xA0 | len(raw)]) + raw


def _raw_call(params: list[tuple[str, bytes]]) -> bytes:
    """A call to peer.Kinds.take whose parameter map is written byte by byte."""
    body = b"".join(_mstr(k.encode()) + v for k, v in params)
    head = msgspec.msgpack.encode([KIND_CALL, mid("take", "peer.Kinds"), 1])
    return bytes([0x94]) + head[1:] + bytes([0x80 | len(params)]) + body


enc = msgspec.msgpack.encode


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ([("ratio", enc(float("nan")))], "$.ratio", "Expected `float` >= 0.0 - at `$.ratio`"),
        ([("ratio", enc(float("inf")))], "$.ratio", "Expected `float` <= 1.0 - at `$.ratio`"),
        ([("ratio", enc(float("-inf")))], "$.ratio", "Expected `float` >= 0.0 - at `$.ratio`"),
        ([("user", enc(True))], "$.user", "Expected `int`, got `bool` - at `$.user`"),
        ([("user", enc(1.0))], "$.user", "Expected `int`, got `float` - at `$.user`"),
        ([("small", enc(2**64 - 1))], "$.small", "Expected `int` <= 5 - at `$.small`"),
        ([("small", enc(-(2**63)))], "$.small", "Expected `int` >= -5 - at `$.small`"),
        # No MessagePack int is wider than 64 bits: a bigger one can only arrive as
        # something else (here a bin), never as an int.
        ([("count", enc((2**64).to_bytes(9, "big")))], "$.count",
         "Expected `int`, got `bytes` - at `$.count`"),
        # Malformed MessagePack (msgspec's DecodeError) carries no path: method, no field.
        ([("name", _mstr(b"\xff\xfe"))], None, "invalid payload: Invalid UTF-8 encoded string"),
        ([("name", _mstr(b"\xed\xa0\x80"))], None,
         "invalid payload: Invalid UTF-8 encoded string"),  # a lone surrogate, CESU-8 style
        ([("name", enc("123456789"))], "$.name", "Expected `str` of length <= 8 - at `$.name`"),
        ([("name", enc(b"bytes"))], "$.name", "Expected `str`, got `bytes` - at `$.name`"),
        ([("blob", enc("text"))], "$.blob", "Expected `bytes`, got `str` - at `$.blob`"),
        ([("buf", enc("text"))], "$.buf", "Expected `bytes`, got `str` - at `$.buf`"),
        ([("mode", enc("x"))], "$.mode", "Invalid enum value 'x' - at `$.mode`"),
        ([("color", enc("blue"))], "$.color", "Invalid enum value 'blue' - at `$.color`"),
        ([("level", enc(2))], "$.level", "Invalid enum value 2 - at `$.level`"),
        ([("when", enc("yesterday"))], "$.when", "Invalid RFC3339 encoded datetime - at `$.when`"),
        ([("ident", enc("not-a-uuid"))], "$.ident", "Invalid UUID - at `$.ident`"),
        ([("amount", enc("1.2.3"))], "$.amount", "Invalid decimal string - at `$.amount`"),
        ([("xyz", enc([1, 2]))], "$.xyz", "Expected `array` of length 3, got 2 - at `$.xyz`"),
        ([("xyz", enc([1, 2, 3, 4]))], "$.xyz",
         "Expected `array` of length 3, got 4 - at `$.xyz`"),
        ([("many", enc([1] * 5))], "$.many", "Expected `array` of length <= 4 - at `$.many`"),
        ([("by_id", enc({"1": "a"}))], "$.by_id",
         "Expected `int`, got `str` - at `key` in `$.by_id`"),
        ([("by_id", enc({1: "a", 2: "b", 3: "c"}))], "$.by_id",
         "Expected `object` of length <= 2 - at `$.by_id`"),
        ([("names", enc(["a"] * 5))], "$.names",
         "Expected `array` of length <= 4 - at `$.names`"),
        ([("opts", enc({"retries": 1}))], "$.opts",
         "Object missing required field `name` - at `$.opts`"),
        ([("opts", enc({"name": "a", "retries": 4}))], "$.opts.retries",
         "Expected `int` <= 3 - at `$.opts.retries`"),
        ([("opts", enc({"name": "a", "admin": True}))], "$.opts",
         "Object contains unknown field `admin` - at `$.opts`"),
        ([("opts", enc({"name": "a", "tags": ["123456789"]}))], "$.opts.tags[0]",
         "Expected `str` of length <= 8 - at `$.opts.tags[0]`"),
    ],
)
def test_each_kind_refuses_what_it_does_not_declare(
    params: list[tuple[str, bytes]], field: str | None, reason: str
) -> None:
    impl = KindsImpl()
    out = run_hostile(lambda: [(_raw_call(params), [])], serve=impl)
    assert isinstance(out.reason, ipc.BadMessage)
    assert (out.reason.interface, out.reason.method) == ("peer.Kinds", "take")
    assert (out.reason.field, out.reason.reason) == (field, reason)
    assert impl.calls == 0


def test_each_kind_delivers_what_it_declares() -> None:
    """The same raw peer, with valid values, is answered (the table above is not vacuous)."""
    impl = KindsImpl()
    params = [
        ("ratio", enc(1.0)), ("small", enc(-5)), ("count", enc(2**64 - 1)),
        ("name", _mstr("é".encode())), ("mode", enc("w")), ("level", enc(1)),
        ("when", enc("2026-12-01T00:00:00Z")), ("ident", enc(str(uuid.UUID(int=1)))),
        ("amount", enc("1.25")), ("xyz", enc([1, 2, 3])), ("by_id", enc({1: "a"})),
        ("opts", enc({"name": "a", "tags": ["x"]})),
    ]
    out = run_hostile(lambda: [(_raw_call(params), []), (b"\xc1", [])], serve=impl)
    assert isinstance(out.reason, ipc.BadMessage) and out.reason.method is None
    assert impl.calls == 1
    assert [msgspec.msgpack.decode(r) for r in out.replies] == [[2, mid("take", "peer.Kinds"),
                                                                 1, 1]]

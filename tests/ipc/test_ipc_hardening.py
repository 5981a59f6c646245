"""A hostile peer against the classes of hole that let data through unchecked or pin the
trusted side's resources: open types in declarations, arguments aliasing the receive
buffer, close reasons pinning fds and the buffer, fds queued for a peer that never reads,
`$` in patterns, and nesting deeper than the decoder can take.

(No `from __future__ import annotations`: the declarations below use local types.)
"""

import asyncio
import datetime
import enum
import os
import re
import signal
import socket
from collections.abc import Callable
from typing import Annotated, Any, Generic, Literal, NewType, TypeVar

import msgspec
import pytest

from tests.ipc.helpers import HANG_GUARD, ROOT, call, mid, open_fds, tmpfile
from tests.ipc.ifaces import Service
from tests.ipc.impls import ServiceImpl
from warden import ipc
from warden.ipc.channel import send_frame
from warden.ipc.wire import KIND_CALL, KIND_REPLY, MAX_NESTING, method_id

# ---- declarations ---------------------------------------------------------------------------

T = TypeVar("T")


class Box(msgspec.Struct, Generic[T], frozen=True, forbid_unknown_fields=True):
    item: T


class WithRaw(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    raw: msgspec.Raw


class Deep(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    inner: list[dict[str, Any]]


class Thing:
    pass


class Mood(enum.Enum):
    CALM = "calm"


UserId = NewType("UserId", int)
AnyId = NewType("AnyId", object)  # type: ignore[valid-newtype]

ANY = (
    "`Any`/`object` is not allowed: it lets any data through (as does a bare list, dict, tuple "
    "or set, an unparameterised generic struct or a TypeVar); declare the precise type, "
    "e.g. list[int] or dict[str, int]"
)
RAW = (
    "`msgspec.Raw` is not allowed: it passes undecoded data that aliases the receive buffer; "
    "declare the type to decode into (bytes for opaque data)"
)
MEMORYVIEW = (
    "`memoryview` is not allowed: it would alias the receive buffer, which the next frame "
    "overwrites; declare bytes (decoded as an owned copy)"
)


def declare_param(ann: Any) -> type[ipc.Interface]:
    def m(self: Any, ctx: ipc.Context, x: ann) -> None:  # type: ignore[valid-type]
        raise NotImplementedError

    return type("Decl", (ipc.Interface,), {"__module__": __name__, "m": ipc.call()(m)},
                name="hard.Decl")


def declare_return(ann: Any) -> type[ipc.Interface]:
    def m(self: Any, ctx: ipc.Context) -> ann:  # type: ignore[valid-type]
        raise NotImplementedError

    return type("Decl", (ipc.Interface,), {"__module__": __name__, "m": ipc.call()(m)},
                name="hard.Decl")


@pytest.mark.parametrize(
    ("ann", "expected"),
    [
        (object, f"hard.Decl.m(x): {ANY}"),
        (Any, f"hard.Decl.m(x): {ANY}"),
        (dict, f"hard.Decl.m(x): {ANY}"),
        (list, f"hard.Decl.m(x): {ANY}"),
        (tuple, f"hard.Decl.m(x): {ANY}"),
        (set, f"hard.Decl.m(x): {ANY}"),
        (list[Any], f"hard.Decl.m(x): {ANY}"),
        (dict[str, object], f"hard.Decl.m(x): {ANY}"),
        (object | None, f"hard.Decl.m(x): {ANY}"),
        (Annotated[object, msgspec.Meta(title="t")], f"hard.Decl.m(x): {ANY}"),
        (AnyId, f"hard.Decl.m(x): {ANY}"),
        (T, f"hard.Decl.m(x): {ANY}"),
        (Box, f"hard.Decl.m(x).item: {ANY}"),
        (list[Box[Any]], f"hard.Decl.m(x).item: {ANY}"),
        (Deep, f"hard.Decl.m(x).inner: {ANY}"),
        (msgspec.Raw, f"hard.Decl.m(x): {RAW}"),
        (WithRaw, f"hard.Decl.m(x).raw: {RAW}"),
        (memoryview, f"hard.Decl.m(x): {MEMORYVIEW}"),
        (list[memoryview], f"hard.Decl.m(x): {MEMORYVIEW}"),
        (Box[memoryview], f"hard.Decl.m(x).item: {MEMORYVIEW}"),
        (msgspec.msgpack.Ext, "hard.Decl.m(x): `msgspec.msgpack.Ext` is not allowed: its type "
                              "code is not checked; declare bytes with a max_length"),
        (Thing, "hard.Decl.m(x): Thing is not a type the decoder checks; use a frozen msgspec "
                "Struct with forbid_unknown_fields=True"),
    ],
    ids=lambda v: re.sub(r"\W+", "_", repr(v))[:40],
)
def test_open_and_aliasing_parameter_types_are_refused(ann: Any, expected: str) -> None:
    with pytest.raises(ipc.InterfaceError) as err:
        declare_param(ann)
    assert str(err.value) == expected


@pytest.mark.parametrize(
    ("ann", "expected"),
    [
        (msgspec.Raw, f"hard.Decl.m(return): {RAW}"),
        (memoryview, f"hard.Decl.m(return): {MEMORYVIEW}"),
        (dict, f"hard.Decl.m(return): {ANY}"),
        (Box, f"hard.Decl.m(return).item: {ANY}"),
    ],
)
def test_open_and_aliasing_return_types_are_refused(ann: Any, expected: str) -> None:
    with pytest.raises(ipc.InterfaceError) as err:
        declare_return(ann)
    assert str(err.value) == expected


def test_a_union_with_object_is_refused() -> None:
    with pytest.raises(ipc.InterfaceError) as err:
        declare_param(bytes | object)
    assert str(err.value).startswith(
        "hard.Decl.m: parameter x: unsupported type bytes | object: Type unions containing a "
        "custom type may not contain any additional types other than `None`"
    )


@pytest.mark.parametrize(
    "ann",
    [
        int, bytes, bytearray, str, bool, float, None, Literal["a", "b"], Mood, UserId,
        Annotated[int, msgspec.Meta(ge=0, le=9)], Box[int], tuple[int, str], frozenset[int],
        dict[str, list[int]], int | None, datetime.datetime, list[Box[bytes]],
        Annotated[str, msgspec.Meta(pattern=r"\A[a-z]+\Z")],
        Annotated[str, msgspec.Meta(pattern=r"\A[a-z$]+\$\Z")],  # `$` as a literal is fine
    ],
    ids=repr,
)
def test_precise_types_are_accepted(ann: Any) -> None:
    assert "m" in declare_param(ann).__ipc_methods__


def test_a_dollar_anchor_in_a_pattern_is_refused() -> None:
    # Why: msgspec searches the pattern, and `$` matches before a trailing newline.
    dollar = Annotated[str, msgspec.Meta(pattern=r"^[a-z]+$")]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode("abc\n"), type=dollar) == "abc\n"
    with pytest.raises(ipc.InterfaceError) as err:
        declare_param(Annotated[str, msgspec.Meta(pattern=r"^[a-z]+$")])
    assert str(err.value) == (
        "hard.Decl.m(x): pattern '^[a-z]+$' uses `$`, which also matches before a trailing "
        "newline; anchor it as \\A...\\Z (msgspec searches the pattern anywhere in the string)"
    )
    with pytest.raises(ipc.InterfaceError, match=r"hard\.Decl\.m\(x\)\.item: pattern"):
        declare_param(Box[Annotated[str, msgspec.Meta(pattern="a$|b")]])
    with pytest.raises(ipc.InterfaceError, match=r"hard\.Decl\.m\(x\): pattern"):
        declare_param(dict[Annotated[str, msgspec.Meta(pattern="[a]$")], int])


def nested_list(levels: int) -> Any:
    t: Any = int
    for _ in range(levels):
        t = list[t]
    return t


def test_nesting_is_capped_at_declaration() -> None:
    assert MAX_NESTING == 64
    declare_param(nested_list(MAX_NESTING - 1))  # + the parameter map: exactly the cap
    with pytest.raises(ipc.InterfaceError) as err:
        declare_param(nested_list(MAX_NESTING))
    assert str(err.value) == (
        "hard.Decl.m(parameters): nests 65 levels of arrays/maps; a payload may nest at most 64 "
        "(flatten the type, or pass the data as a SealedMemory)"
    )
    declare_return(nested_list(MAX_NESTING))
    with pytest.raises(ipc.InterfaceError) as err:
        declare_return(nested_list(MAX_NESTING + 1))
    assert str(err.value).startswith("hard.Decl.m(return): nests 65 levels of arrays/maps;")


# ---- the docs' FileName pattern ------------------------------------------------------------


def docs_file_name() -> Any:
    """The `FileName` type exactly as docs/ipc.md declares it."""
    with open(os.path.join(ROOT, "docs", "ipc.md")) as f:
        (line,) = [ln for ln in f if ln.startswith("FileName = ")]
    namespace: dict[str, Any] = {"Annotated": Annotated, "msgspec": msgspec}
    exec(line, namespace)
    return namespace["FileName"]


class Names(ipc.Interface, name="hard.Names"):
    @ipc.call()
    def open(self, ctx: ipc.Context, name: docs_file_name()) -> bool:  # type: ignore[valid-type]
        raise NotImplementedError


class NamesImpl(Names):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def open(self, ctx: ipc.Context, name: str) -> bool:
        self.seen.append(name)
        return True


def test_docs_file_name_refuses_a_trailing_newline() -> None:
    file_name = docs_file_name()
    for good in ("input.csv", "a", "_x-1.tar.gz"):
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(good), type=file_name) == good
    for evil in ("input.csv\n", "..", ".hidden", "a/b", "", "a\nb", "x" * 256):
        with pytest.raises(msgspec.ValidationError):
            msgspec.msgpack.decode(msgspec.msgpack.encode(evil), type=file_name)

    async def scenario() -> tuple[ipc.ChannelError | None, list[str]]:
        before = open_fds()
        ours, evil = ipc.channel_pair()
        impl = NamesImpl()
        ch = ipc.attach(ours, peer_id="evil", serve=impl)
        evil.send(call("open", 1, {"name": "input.csv"}, "hard.Names"))
        evil.send(call("open", 2, {"name": "input.csv\n"}, "hard.Names"))
        reason = await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        evil.close()
        assert open_fds() == before
        return reason, impl.seen

    reason, seen = asyncio.run(scenario())
    assert seen == ["input.csv"]
    assert isinstance(reason, ipc.BadMessage)
    assert reason.field == "$.name"
    assert reason.reason.startswith("Expected `str` matching regex")


# ---- nothing a handler holds aliases the receive buffer ---------------------------------------

Blob = Annotated[bytes, msgspec.Meta(max_length=8192)]
Buf = Annotated[bytearray, msgspec.Meta(max_length=8192)]


class Part(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    label: Annotated[str, msgspec.Meta(max_length=64)]
    data: Blob


class Keeper(ipc.Interface, name="hard.Keeper"):
    @ipc.call()
    def keep(self, ctx: ipc.Context, data: Blob, buf: Buf, part: Part,
             parts: Annotated[list[Blob], msgspec.Meta(max_length=8)]) -> bool:
        raise NotImplementedError

    @ipc.call()
    def echo(self, ctx: ipc.Context, data: Blob) -> bytes:
        raise NotImplementedError


def snapshot(args: tuple[Any, ...]) -> Any:
    data, buf, part, parts = args
    return bytes(data), bytes(buf), part.label, bytes(part.data), [bytes(p) for p in parts]


class AsyncKeeper(Keeper):
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.at_start: Any = None
        self.at_end: Any = None

    async def keep(  # type: ignore[override]
        self, ctx: ipc.Context, data: bytes, buf: bytearray, part: Part, parts: list[bytes]
    ) -> bool:
        self.at_start = snapshot((data, buf, part, parts))
        self.started.set()
        await self.release.wait()  # meanwhile the peer's next frames land in the buffer
        self.at_end = snapshot((data, buf, part, parts))
        return bool(self.at_start == self.at_end)

    def echo(self, ctx: ipc.Context, data: bytes) -> bytes:
        return data


KEEP_ARGS = {"data": b"A" * 4000, "buf": b"B" * 4000, "part": {"label": "C" * 60,
             "data": b"D" * 4000}, "parts": [b"E" * 1000, b"F" * 1000]}


def test_an_awaiting_handler_never_sees_its_arguments_change() -> None:
    async def scenario() -> AsyncKeeper:
        loop = asyncio.get_running_loop()
        impl = AsyncKeeper()
        ours, evil = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="evil", serve=impl)
        evil.send(call("keep", 1, KEEP_ARGS, "hard.Keeper"))
        await asyncio.wait_for(impl.started.wait(), HANG_GUARD)
        for rid in range(2, 22):  # each frame overwrites the receive buffer from byte 0
            evil.send(call("echo", rid, {"data": bytes([rid]) * 8000}, "hard.Keeper"))
            got = await loop.run_in_executor(None, evil.recv, 1 << 17)
            assert msgspec.msgpack.decode(got)[3] == bytes([rid]) * 8000
        impl.release.set()
        got = await loop.run_in_executor(None, evil.recv, 1 << 17)
        assert msgspec.msgpack.decode(got) == [KIND_REPLY, mid("keep", "hard.Keeper"), 1, True]
        evil.close()
        await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        return impl

    impl = asyncio.run(scenario())
    assert impl.at_start == impl.at_end == snapshot(
        (b"A" * 4000, b"B" * 4000, Part("C" * 60, b"D" * 4000), [b"E" * 1000, b"F" * 1000])
    )


class KeepingKeeper(Keeper):
    def __init__(self) -> None:
        self.kept: list[tuple[Any, ...]] = []

    def keep(self, ctx: ipc.Context, data: bytes, buf: bytearray, part: Part,
             parts: list[bytes]) -> bool:
        self.kept.append((data, buf, part, parts))
        return True

    def echo(self, ctx: ipc.Context, data: bytes) -> bytes:
        return data


def test_blocking_side_arguments_outlive_the_next_frames() -> None:
    ours, evil = ipc.channel_pair()
    impl = KeepingKeeper()
    ch = ipc.connect(ours, serve=impl)
    evil.send(call("keep", 1, KEEP_ARGS, "hard.Keeper"))
    assert ch.serve_one()
    for rid in range(2, 12):
        evil.send(call("echo", rid, {"data": bytes([rid]) * 8000}, "hard.Keeper"))
        assert ch.serve_one()
    ch.close()
    evil.close()
    (kept,) = impl.kept
    assert snapshot(kept) == snapshot(
        (b"A" * 4000, b"B" * 4000, Part("C" * 60, b"D" * 4000), [b"E" * 1000, b"F" * 1000])
    )


# ---- a rejected message's fds, and the close reason, pin nothing ------------------------------


class Dropper(ServiceImpl):
    """Lets go of the handle it was given without closing it: it must close on its own."""

    def read_file(self, ctx: ipc.Context, f: ipc.ReadFile) -> bytes:
        return b"dropped"


def assert_plain_record(reason: BaseException) -> None:
    assert reason.__traceback__ is None
    assert reason.__context__ is None
    assert reason.__cause__ is None


def fork_peer(sock: socket.socket, body: Callable[[socket.socket], None]) -> int:
    """A real child process that writes `body`'s frames on `sock`, then waits to be killed."""
    pid = os.fork()
    if pid == 0:
        try:
            body(sock)
            signal.pause()
        finally:
            os._exit(0)
    sock.close()
    return pid


def reap(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("bad_frame", ["garbage", "wrong_fd_kind", "too_many_fds_held"])
def test_fds_of_a_rejected_message_are_closed_while_the_reason_is_held(
    tmp_path: Any, bad_frame: str
) -> None:
    """A real child sends a valid message whose handler drops (or keeps) its handle, then a
    bad frame carrying several fds, in one burst. Every fd of the peer is closed by the time
    the hook runs, the one a handler kept included, and stays closed while the embedder holds
    the reason and the handle; the reason holds no traceback."""
    paths = [tmp_path / f"f{i}" for i in range(8)]
    for p in paths:
        p.write_bytes(b"x")

    def body(evil: socket.socket) -> None:
        fd = os.open(paths[0], os.O_RDONLY)
        send_frame(evil, call("read_file", 1, {}), [fd])
        if bad_frame == "garbage":
            fds = [os.open(p, os.O_RDONLY) for p in paths[1:6]]
            send_frame(evil, b"\xc1 not msgpack", fds)
        elif bad_frame == "wrong_fd_kind":
            fds = [os.open(paths[1], os.O_WRONLY)]
            send_frame(evil, call("read_file", 2, {}), fds)
        else:  # the handler above let its handle go, so this is the only one held
            fds = [os.open(paths[2], os.O_RDONLY)]
            send_frame(evil, call("read_file", 2, {}), fds)

    async def scenario() -> ipc.ChannelError | None:
        before = open_fds()
        ours, theirs = ipc.channel_pair()
        at_hook: list[set[int]] = []
        hooked: list[ipc.PeerError] = []

        def hook(reason: ipc.PeerError) -> None:
            hooked.append(reason)
            at_hook.append(open_fds() - before - {ours.fileno()})

        limits = ipc.Limits(max_fds_held=1 if bad_frame == "too_many_fds_held" else 64)
        if bad_frame == "too_many_fds_held":
            impl: ServiceImpl = Keeping()
        else:
            impl = Dropper()
        ch = ipc.attach(ours, peer_id="evil", serve=impl, on_bad_message=hook, on_cut_off=hook,
                        limits=limits)
        pid = fork_peer(theirs, body)
        try:
            reason = await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        finally:
            reap(pid)
        assert at_hook == [set()], f"fds open while the hook ran: {at_hook}"
        assert hooked == [reason]
        if isinstance(impl, Keeping):  # a misbehaving peer's handles are closed, kept or not
            assert [f.closed for f in impl.kept] == [True]
        assert open_fds() == before, "the reason (still held) pins fds"
        assert ch.close_reason is reason
        return reason

    reason = asyncio.run(scenario())
    assert isinstance(reason, ipc.PeerError)
    assert_plain_record(reason)
    if bad_frame == "too_many_fds_held":
        assert isinstance(reason, ipc.CutOff)
        assert reason.limit == "max_fds_held"
    else:
        assert isinstance(reason, ipc.BadMessage)


class Keeping(ServiceImpl):
    """Keeps its handle open (so the next one goes over max_fds_held=1)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[ipc.ReadFile] = []

    def read_file(self, ctx: ipc.Context, f: ipc.ReadFile) -> bytes:
        self.kept.append(f)
        return b"kept"


def test_a_closed_channel_keeps_no_receive_buffer() -> None:
    async def scenario() -> ipc.AsyncChannel:
        ours, evil = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="evil", serve=ServiceImpl())
        evil.send(b"\xc1")
        await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        evil.close()
        return ch

    ch = asyncio.run(scenario())
    assert len(ch._reader._buf) == 0  # released on close, not kept for the channel's lifetime


def frame_locals(exc: BaseException) -> list[Any]:
    values: list[Any] = []
    tb = exc.__traceback__
    while tb is not None:
        values.extend(tb.tb_frame.f_locals.values())
        tb = tb.tb_next
    return values


def pins_buffer(value: Any) -> bool:
    """Whether `value` keeps a receive buffer alive (a released memoryview does not)."""
    if isinstance(value, bytearray):
        return len(value) > 0
    if isinstance(value, memoryview):
        try:
            return value.nbytes > 0
        except ValueError:  # released
            return False
    if isinstance(value, list):
        return any(pins_buffer(v) for v in value)
    return False


def test_blocking_side_bad_message_pins_no_buffer_or_fd(tmp_path: Any) -> None:
    before = open_fds()
    ours, evil = ipc.channel_pair()
    ch = ipc.connect(ours, serve=Dropper())
    fd = tmpfile(tmp_path, "a")
    send_frame(evil, call("read_file", 1, {}), [fd])
    os.close(fd)
    fds = [tmpfile(tmp_path, f"b{i}") for i in range(4)]
    send_frame(evil, b"\xc1 garbage", fds)
    for fd in fds:
        os.close(fd)
    assert ch.serve_one()
    with pytest.raises(ipc.BadMessage) as err:
        ch.serve_forever()
    evil.close()
    bad = err.value
    assert bad.reason.startswith("invalid envelope: MessagePack data is malformed")
    assert bad.__context__ is None and bad.__cause__ is None
    assert not [v for v in frame_locals(bad) if pins_buffer(v)]
    assert ch.closed
    assert open_fds() == before  # `bad` (and its traceback) still alive here


# ---- fds queued for a peer that never reads are bounded -----------------------------------------


class CountingFiles(ServiceImpl):
    """open_data returns a fresh ReadFile; records how many extra fds we hold at each call."""

    def __init__(self, data_path: str, base: set[int]) -> None:
        super().__init__(data_path)
        self.base = base
        self.most = 0
        self.calls = 0

    def open_data(self, ctx: ipc.Context) -> ipc.ReadFile:
        self.calls += 1
        self.most = max(self.most, len(open_fds() - self.base))
        return super().open_data(ctx)


@pytest.mark.parametrize("limits", [ipc.DEFAULT_LIMITS, ipc.Limits(max_fds_queued=4)],
                         ids=["default", "queued4"])
def test_a_peer_that_never_reads_returned_handles_is_cut_off(
    tmp_path: Any, limits: ipc.Limits
) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"payload")

    def body(evil: socket.socket) -> None:
        try:
            for rid in range(1, 1002):  # the 1,001 calls, never reading a reply
                send_frame(evil, call("open_data", rid, {}))
        except OSError:
            pass  # cut off: the trusted side closed the channel

    async def scenario() -> tuple[ipc.ChannelError | None, CountingFiles]:
        before = open_fds()
        ours, theirs = ipc.channel_pair()
        impl = CountingFiles(str(data), before | {ours.fileno()})
        cut: list[ipc.CutOff] = []
        ch = ipc.attach(ours, peer_id="silent", serve=impl, limits=limits,
                        on_cut_off=cut.append)
        pid = fork_peer(theirs, body)
        try:
            reason = await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        finally:
            reap(pid)
        assert cut == [reason]
        assert open_fds() == before, "every queued fd is closed when the peer is cut off"
        return reason, impl

    reason, impl = asyncio.run(scenario())
    assert isinstance(reason, ipc.CutOff)
    assert reason.limit == "max_fds_queued"
    assert str(reason) == (
        f"peer 'silent' cut off: peer does not read: more than {limits.max_fds_queued} fds "
        "queued for it"
    )
    assert impl.calls < 1001
    # our queued copies, plus the handle the handler is about to return
    assert impl.most <= limits.max_fds_queued + 1, impl.most
    assert_plain_record(reason)


def test_our_calls_passing_handles_to_a_peer_that_never_reads_are_bounded(tmp_path: Any) -> None:
    async def scenario() -> ipc.ChannelError | None:
        before = open_fds()
        fd = tmpfile(tmp_path, "f")
        ours, silent = ipc.channel_pair()
        limits = ipc.Limits(max_fds_queued=8)
        ch = ipc.attach(ours, peer_id="silent", remote=Service, limits=limits)
        base = open_fds()
        pending, most = [], 0
        while not ch.closed and len(pending) < 100_000:
            pending.append(asyncio.ensure_future(ch.remote.read_file(fd)))
            most = max(most, len(open_fds() - base))
            await asyncio.sleep(0)
        reason = await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, ipc.ChannelClosed) for r in results)
        assert most <= limits.max_fds_queued, most
        os.close(fd)
        silent.close()
        assert open_fds() == before
        return reason

    reason = asyncio.run(scenario())
    assert isinstance(reason, ipc.CutOff)
    assert reason.limit == "max_fds_queued"


def test_max_fds_queued_is_validated() -> None:
    with pytest.raises(ValueError, match=r"Limits\.max_fds_queued must be a positive int, got 0"):
        ipc.Limits(max_fds_queued=0)


# ---- nesting deeper than the cap ------------------------------------------------------------


class Tree(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=8)]
    children: Annotated[list["Tree"], msgspec.Meta(max_length=4)] = []


class Trees(ipc.Interface, name="hard.Trees"):
    @ipc.call()
    def size(self, ctx: ipc.Context, tree: Tree) -> int:
        raise NotImplementedError

    @ipc.call()
    def grow(self, ctx: ipc.Context, levels: int) -> Tree:
        raise NotImplementedError


def count(tree: Tree) -> int:
    return 1 + sum(count(c) for c in tree.children)


class TreesImpl(Trees):
    def size(self, ctx: ipc.Context, tree: Tree) -> int:
        return count(tree)

    def grow(self, ctx: ipc.Context, levels: int) -> Tree:
        raise NotImplementedError


def chain(nodes: int, *, empty_tail: bool = False) -> bytes:
    """A {"tree": ...} payload: `nodes` nested Trees, 2 levels each (the map, its list)."""
    level = b"\x82\xa4name\xa1a\xa8children\x91"
    tail = b"\x82\xa4name\xa1a\xa8children\x90" if empty_tail else b"\x81\xa4name\xa1a"
    return b"\x81\xa4tree" + level * (nodes - 1) + tail


def send_tree(payload: bytes) -> tuple[ipc.ChannelError | None, list[bytes]]:
    async def scenario() -> tuple[ipc.ChannelError | None, list[bytes]]:
        before = open_fds()
        ours, evil = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="evil", serve=TreesImpl())
        evil.send(msgspec.msgpack.encode(
            (KIND_CALL, method_id("hard.Trees", "size"), 1, msgspec.Raw(payload))))
        evil.send(b"\xc1")  # then end it, so a delivered call is seen as a reply first
        reason = await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        evil.setblocking(False)
        replies = []
        try:
            while got := evil.recv(1 << 17):
                replies.append(got)
        except (BlockingIOError, ConnectionResetError):
            pass
        evil.close()
        assert open_fds() == before
        return reason, replies

    return asyncio.run(scenario())


@pytest.mark.parametrize("payload", [chain(32), chain(32, empty_tail=True)],
                         ids=["64", "64+empty"])
def test_a_payload_at_the_nesting_cap_is_delivered(payload: bytes) -> None:
    """1 + 2*32 - 1 = 64 levels; an empty list below them holds nothing deeper."""
    reason, replies = send_tree(payload)
    assert [msgspec.msgpack.decode(r)[3] for r in replies] == [32]
    assert isinstance(reason, ipc.BadMessage)  # the closing garbage frame
    assert reason.reason.startswith("invalid envelope")


@pytest.mark.parametrize("payload", [chain(33), chain(400), chain(5000)],
                         ids=["66", "800", "10000"])
def test_a_payload_deeper_than_the_cap_is_a_bad_message(payload: bytes) -> None:
    reason, replies = send_tree(payload)
    assert replies == []
    assert isinstance(reason, ipc.BadMessage)
    assert reason.reason == "nesting deeper than 64"
    assert_plain_record(reason)


def test_a_reply_deeper_than_the_cap_is_a_bad_message() -> None:
    async def scenario() -> ipc.ChannelError | None:
        before = open_fds()
        ours, evil = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="evil", remote=Trees)
        pending = asyncio.ensure_future(ch.remote.grow(40))
        got = await asyncio.get_running_loop().run_in_executor(None, evil.recv, 4096)
        _, method, rid, _ = msgspec.msgpack.decode(got)
        reply = chain(40)[len(b"\x81\xa4tree"):]  # the Tree itself: 79 levels
        evil.send(msgspec.msgpack.encode((KIND_REPLY, method, rid, msgspec.Raw(reply))))
        reason = await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        with pytest.raises(ipc.ChannelClosed):
            await pending
        evil.close()
        assert open_fds() == before
        return reason

    reason = asyncio.run(scenario())
    assert isinstance(reason, ipc.BadMessage)
    assert (reason.method, reason.reason) == ("grow", "nesting deeper than 64")


def test_we_refuse_to_send_what_is_nested_too_deep() -> None:
    ours, theirs = ipc.channel_pair()
    ch = ipc.connect(ours, remote=Trees)
    tree = Tree("a")
    for _ in range(40):
        tree = Tree("a", [tree])
    with pytest.raises(ValueError, match=r"^hard\.Trees\.size: invalid arguments: nesting deeper "
                                         r"than 64$"):
        ch.remote.size(tree)
    ch.close()
    theirs.close()


def test_bystanders_are_unaffected() -> None:
    """The cases above close only the hostile channel: a peer beside it keeps working."""

    async def scenario() -> None:
        good_ours, good_theirs = ipc.channel_pair()
        evil_ours, evil = ipc.channel_pair()
        ipc.attach(good_ours, peer_id="good", serve=ServiceImpl())
        bad = ipc.attach(evil_ours, peer_id="evil", serve=TreesImpl())
        evil.send(msgspec.msgpack.encode(
            (KIND_CALL, method_id("hard.Trees", "size"), 1, msgspec.Raw(chain(5000)))))
        assert isinstance(await asyncio.wait_for(bad.wait_closed(), HANG_GUARD), ipc.BadMessage)
        client = ipc.connect(good_theirs, remote=Service)
        loop = asyncio.get_running_loop()
        echoed = await loop.run_in_executor(None, client.remote.echo, b"still here")
        assert echoed == b"still here"
        client.close()
        evil.close()

    asyncio.run(scenario())



# ---- what a peer puts in a reason is bounded and cannot forge log lines ------------------------


def test_a_reason_quoting_the_peer_is_bounded_and_escaped() -> None:
    async def scenario() -> ipc.ChannelError | None:
        ours, evil = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="evil", serve=ServiceImpl())
        field = "x\nWARNING supervisor: worker 3 exited ok\n" + "y" * 100_000
        evil.send(call("norm", 1, {"p": {"x": 1, "y": 2, "z": 3}, field: 1}))
        reason = await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        evil.close()
        return reason

    reason = asyncio.run(scenario())
    assert isinstance(reason, ipc.BadMessage)
    assert reason.reason.startswith(
        "Object contains unknown field `x\\nWARNING supervisor: worker 3 exited ok\\nyyy"
    )
    assert re.search(r"yyy\.\.\. \(1000\d\d characters\)$", reason.reason), reason.reason[-40:]
    assert "\n" not in str(reason)
    assert len(reason.reason) < 600

"""Who closes an fd that is sent: docs/ipc.md's "Handles own their fd" rule, checked."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from pathlib import Path

import msgspec
import pytest

from tests.ipc.helpers import call, frame, mid, open_fds, tmpfile
from tests.ipc.impls import ServiceImpl
from warden import errors, ipc
from warden.ipc.channel import send_frame
from warden.ipc.wire import KIND_REPLY


class Sink(ipc.Interface, name="test.Sink"):
    @ipc.call()
    def size(self, ctx: ipc.Context, f: ipc.ReadFile) -> int:
        raise NotImplementedError


class SinkImpl(Sink):
    def size(self, ctx: ipc.Context, f: ipc.ReadFile) -> int:
        with f:
            return os.fstat(f.fileno()).st_size


def _open_file() -> int:
    with tempfile.TemporaryFile() as t:
        t.write(b"12345")
        t.flush()
        return os.open(f"/proc/self/fd/{t.fileno()}", os.O_RDONLY | os.O_CLOEXEC)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_handle_built_from_your_fd_owns_it_and_closes_it() -> None:
    ours, theirs = ipc.channel_pair()
    server = ipc.connect(theirs, serve=SinkImpl())
    t = threading.Thread(target=server.serve_forever)
    t.start()
    client = ipc.connect(ours, remote=Sink)
    try:
        # A plain fd number: sent as is, the caller keeps (and must close) it.
        fd = _open_file()
        assert client.remote.size(fd) == 5
        assert _is_open(fd)
        # A handle made from it owns it: the temporary is dropped after the send,
        # and closes the caller's fd with it.
        assert client.remote.size(ipc.ReadFile(fd)) == 5
        assert not _is_open(fd)
        # Keep a copy by handing the handle a dup.
        fd = _open_file()
        h = ipc.ReadFile(os.dup(fd))
        assert client.remote.size(h) == 5
        assert not h.closed  # sending does not close it: dropping or closing it does
        h.close()
        assert _is_open(fd)
        os.close(fd)
    finally:
        client.close()
        t.join(10)
        server.close()
    assert not t.is_alive()


class Source(ipc.Interface, name="test.Source"):
    @ipc.call()
    def fresh(self, ctx: ipc.Context) -> ipc.ReadFile:
        raise NotImplementedError


class SourceImpl(Source):
    def fresh(self, ctx: ipc.Context) -> ipc.ReadFile:
        return ipc.ReadFile(_open_file())  # nothing else holds this handle


def test_a_returned_handle_lives_until_its_reply_is_sent() -> None:
    """serve_forever's inlined reply path must keep the handler's result alive until
    sendmsg: dropped earlier, the handle closes its fd and the reply cannot carry it."""
    ours, theirs = ipc.channel_pair()
    server = ipc.connect(theirs, serve=SourceImpl())
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            server.serve_forever()
        except BaseException as e:  # surfaced below, not lost in the thread
            failures.append(e)
            server.close()  # the client's wait ends in ChannelClosed, not a hang

    t = threading.Thread(target=serve)
    t.start()
    client = ipc.connect(ours, remote=Source)
    try:
        for _ in range(3):
            with client.remote.fresh() as h:
                assert os.pread(h.fileno(), 10, 0) == b"12345"
    finally:
        client.close()
        t.join(10)
        server.close()
    assert not t.is_alive()
    assert failures == []


# ---- received handles: their lifetime is the channel's business, not a local's ----------------
#
# A handler that lets go of a handle expects its fd closed before the next frame is read (it
# no longer counts against the peer's max_fds_held), and a peer that misbehaves loses every
# fd it gave us, whatever still references the handles (a handler, a filed reply, the error
# the embedder keeps). Each test below failed before the frame read and dispatch were one
# path each: the inlined loops kept the last message in a local until the next frame came.


class Dropper(ServiceImpl):
    """Lets go of the handle it was given without closing it."""

    def read_file(self, ctx: ipc.Context, f: ipc.ReadFile) -> bytes:
        return b"dropped"


class Keeper(ServiceImpl):
    """Keeps every handle it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[ipc.ReadFile] = []

    def read_file(self, ctx: ipc.Context, f: ipc.ReadFile) -> bytes:
        self.kept.append(f)
        return b"kept"


def _send_with_file(evil: socket.socket, data: bytes, tmp_path: Path, name: str) -> None:
    fd = tmpfile(tmp_path, name)
    send_frame(evil, data, [fd])
    os.close(fd)


def test_serve_forever_closes_a_dropped_handle_before_the_next_frame(tmp_path: Path) -> None:
    before = open_fds()
    ours, evil = ipc.channel_pair()
    ch = ipc.connect(ours, serve=Dropper(), limits=ipc.Limits(max_fds_held=1))
    for rid in (1, 2, 3):  # one fd each: over the quota only if a dropped one stays open
        _send_with_file(evil, call("read_file", rid, {}), tmp_path, f"f{rid}")
    evil.shutdown(socket.SHUT_WR)
    ch.serve_forever()  # returns at end of stream: no CutOff
    replies = [msgspec.msgpack.decode(evil.recv(4096)) for _ in range(3)]
    assert [r[2:] for r in replies] == [[1, b"dropped"], [2, b"dropped"], [3, b"dropped"]]
    evil.close()
    assert ch.closed
    assert open_fds() == before


class Waiting(ipc.Interface, name="test.Waiting"):
    @ipc.call()
    def answer(self, ctx: ipc.Context) -> int:
        raise NotImplementedError

    @ipc.call()
    def fresh(self, ctx: ipc.Context) -> ipc.ReadFile:
        raise NotImplementedError


def test_a_call_waiting_for_its_reply_closes_dropped_handles_meanwhile(tmp_path: Path) -> None:
    """While our call waits, the peer calls us three times with an fd each; the handler drops
    them, so none counts against max_fds_held=1 when the next arrives."""
    before = open_fds()
    ours, evil = ipc.channel_pair()
    ch = ipc.connect(ours, serve=Dropper(), remote=Waiting, limits=ipc.Limits(max_fds_held=1))
    for rid in (1, 2, 3):
        _send_with_file(evil, call("read_file", rid, {}), tmp_path, f"f{rid}")
    evil.send(frame(KIND_REPLY, mid("answer", "test.Waiting"), 1, 42))  # our call's id is 1
    assert ch.remote.answer() == 42
    ch.close()
    evil.close()
    assert open_fds() == before


@pytest.mark.parametrize("ending", ["bad_message", "cut_off"])
def test_a_misbehaving_peer_loses_every_fd_it_gave_the_blocking_side(
    tmp_path: Path, ending: str
) -> None:
    """The handler keeps the peer's handle; the peer then sends a bad frame (or one fd too
    many). The kept handle is closed with the channel, while the embedder keeps the error,
    the channel and the handler."""
    before = open_fds()
    ours, evil = ipc.channel_pair()
    impl = Keeper()
    ch = ipc.connect(ours, serve=impl, limits=ipc.Limits(max_fds_held=1))
    _send_with_file(evil, call("read_file", 1, {}), tmp_path, "kept")
    if ending == "bad_message":
        _send_with_file(evil, b"\xc1 garbage", tmp_path, "bad")
    else:
        _send_with_file(evil, call("read_file", 2, {}), tmp_path, "over")
    expected = ipc.BadMessage if ending == "bad_message" else ipc.CutOff
    with pytest.raises(expected) as err:
        ch.serve_forever()
    evil.close()
    assert ch.closed
    assert [f.closed for f in impl.kept] == [True]
    assert open_fds() == before  # `err`, `ch` and `impl` all still alive here
    assert isinstance(err.value, errors.ChildFailed)


def test_a_reply_filed_for_an_unwound_caller_is_closed_with_the_channel(tmp_path: Path) -> None:
    """Our call A (fresh, returns a handle) waits; the peer calls our `poke`, whose handler
    calls B (answer) and so waits inside A. The peer answers A (with an fd: filed for A's
    caller) and hangs up. B fails, poke fails, A fails: nobody takes A's reply, and its fd
    is closed when the channel closes, though the embedder keeps the channel."""

    class Poked(ipc.Interface, name="test.Poked"):
        @ipc.call()
        def poke(self, ctx: ipc.Context) -> int:
            raise NotImplementedError

    class PokedImpl(Poked):
        def poke(self, ctx: ipc.Context) -> int:
            return int(ch.remote.answer())

    before = open_fds()
    ours, evil = ipc.channel_pair()
    ch = ipc.connect(ours, serve=PokedImpl(), remote=Waiting)
    evil.send(call("poke", 1, {}, "test.Poked"))
    _send_with_file(evil, frame(KIND_REPLY, mid("fresh", "test.Waiting"), 1, None), tmp_path,
                    "reply")
    evil.shutdown(socket.SHUT_WR)
    with pytest.raises(ipc.ChannelClosed):
        ch.remote.fresh()
    assert ch.closed
    evil.close()
    assert open_fds() == before  # `ch` still alive here


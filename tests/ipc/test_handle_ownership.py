"""Who closes an fd that is sent: docs/ipc.md's "Handles own their fd" rule, checked."""

from __future__ import annotations

import os
import tempfile
import threading

from warden import ipc


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

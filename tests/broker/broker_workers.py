"""Workers that reach their explicit broker through warden.supervisor.worker (both
sides import this module): honest calls, and the attacks a hostile worker makes."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from typing import Annotated

import msgspec

from warden import ipc
from warden.supervisor import worker
from warden.supervisor.broker.explicit import Broker

Text = Annotated[str, msgspec.Meta(max_length=8192)]
Count = Annotated[int, msgspec.Meta(ge=0, le=100000)]


class Brokered(ipc.Interface, name="test.Brokered"):
    @ipc.call()
    def read(self, ctx: ipc.Context, path: Text) -> Text:
        """The file's text, or the refusal's errno name."""
        raise NotImplementedError

    @ipc.call()
    def write(self, ctx: ipc.Context, path: Text, text: Text) -> Text:
        raise NotImplementedError

    @ipc.call()
    def fetch(self, ctx: ipc.Context, host: Text, port: Count) -> Text:
        """What the server at host:port sends first, or the refusal's errno name."""
        raise NotImplementedError

    @ipc.call()
    def malformed(self, ctx: ipc.Context, how: Text) -> Text:
        """Send the broker a frame its declaration forbids (should never return)."""
        raise NotImplementedError

    @ipc.call()
    def hammer(self, ctx: ipc.Context, path: Text, n: Count) -> Count:
        """`n` opens of `path` sent back to back without reading a reply; then the
        replies read. Returns how many came back."""
        raise NotImplementedError

    @ipc.call()
    def hoard(self, ctx: ipc.Context, path: Text, n: Count) -> Count:
        """Open `path` `n` times, keeping every fd: how many opens succeeded."""
        raise NotImplementedError

    @ipc.call()
    def has_broker(self, ctx: ipc.Context) -> bool:
        raise NotImplementedError


def _err(e: ipc.RemoteError) -> str:
    return errno.errorcode[worker.refusal_errno(e)]


class BrokeredImpl(Brokered):
    def __init__(self) -> None:
        self._hoard: list[ipc.ReadFile] = []

    def read(self, ctx: ipc.Context, path: str) -> str:
        try:
            with worker.broker().open_read(path) as h, h.open() as f:
                return str(f.read().decode())
        except ipc.RemoteError as e:
            return _err(e)

    def write(self, ctx: ipc.Context, path: str, text: str) -> str:
        try:
            with worker.broker().open_write(path, create=True, truncate=True) as h:
                os.write(h.fileno(), text.encode())
            return "ok"
        except ipc.RemoteError as e:
            return _err(e)

    def fetch(self, ctx: ipc.Context, host: str, port: int) -> str:
        try:
            with worker.broker().connect(host, port).socket() as s:
                return s.recv(100).decode()
        except ipc.RemoteError as e:
            return _err(e)

    def malformed(self, ctx: ipc.Context, how: str) -> str:
        channel = worker.broker_channel()
        assert channel is not None
        fd = channel.fileno()
        # The declaration's own check is ours to skip: a hostile worker sends anyway.
        channel._session.validate_outgoing = False
        try:  # the supervisor closes the channel on the frame: a call then fails
            if how == "garbage":
                os.write(fd, b"\x93\xff\x00not a frame at all")
            elif how == "relative":
                worker.broker().open_read("etc/passwd")
            elif how == "nul":
                worker.broker().open_read("/data/a\0b")
            elif how == "port":
                worker.broker().connect("127.0.0.1", 70000)
            elif how == "fd":  # a frame carrying an fd no method takes
                with socket.socket(fileno=os.dup(fd)) as s:
                    import array
                    s.sendmsg([b"\x00" * 16], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                array.array("i", [0]))])
        except ipc.ChannelError:
            pass
        # The supervisor closes the broker channel and kills us on the frame: the
        # channel's end comes first, the kill right after it.
        with contextlib.suppress(OSError):
            os.read(fd, 1)
        time.sleep(30)
        return "still alive"

    def hammer(self, ctx: ipc.Context, path: str, n: int) -> int:
        channel = worker.broker_channel()
        assert channel is not None
        spec = Broker.__ipc_methods__["open_read"]
        rids = []
        for _ in range(n):
            data, _fds, rid = channel._encode_request(spec, (path,), {})
            channel._send(data, ())
            rids.append(rid)
        got = 0
        for rid in rids:
            while rid not in channel._replies:
                if not channel._step():
                    return got
            _kind, value = channel._replies.pop(rid)
            if isinstance(value, ipc.Handle):
                value.close()
            got += 1
        return got

    def hoard(self, ctx: ipc.Context, path: str, n: int) -> int:
        ok = 0
        for _ in range(n):
            try:
                self._hoard.append(worker.broker().open_read(path))
                ok += 1
            except (ipc.RemoteError, OSError):
                pass
        return ok

    def has_broker(self, ctx: ipc.Context) -> bool:
        return worker.broker_channel() is not None

"""The supervisor's end of fd 3 under `warden run`: every frame checked, the first bad one fatal.

`warden run` serves no interface, so a well-formed ipc frame is still a
call to a method nobody declared, and is refused like any other invalid
message. Frame-level rules (size cap, ancillary data, fd count) and the
envelope's shape are checked with the ipc package's own reader and decoder,
so the reason recorded is the same sentence an embedded supervisor would
record.
"""

from __future__ import annotations

import os
import select
import socket
from typing import Any


class ChannelGuard:
    """Reads the parent's channel end without blocking; check() returns a reason or None."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.open = True
        sock.setblocking(False)
        self._reader: Any = None
        self._loaded = False

    def _load(self) -> None:
        # Only when the child first writes: most programs never do, and the
        # ipc package is not free to import.
        self._loaded = True
        try:
            from warden.ipc.channel import FrameReader
            from warden.ipc.limits import Limits

            self._reader = FrameReader(self.sock, Limits(), "child")
        except ImportError:  # the ipc package is not installed: no frame is valid
            self._reader = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def check(self) -> str | None:
        """Consume what is readable; the reason for killing the child, if any."""
        try:
            if not self._loaded:
                # The end of the stream is not worth importing ipc for (but an
                # empty frame, which also reads as b"", is judged like any other).
                if not self.sock.recv(1, socket.MSG_PEEK) and self._hung_up():
                    self.open = False
                    return None
                self._load()
            if self._reader is None:
                data = self.sock.recv(1)
                if not data:
                    self.open = False
                    return None
                return "message on fd 3, but warden run serves no interface"
            return self._check_ipc()
        except BlockingIOError:
            return None
        except ConnectionError:
            self.open = False
            return None

    def _hung_up(self) -> bool:
        p = select.poll()
        p.register(self.sock.fileno(), select.POLLIN | select.POLLRDHUP)
        events = p.poll(0)
        return bool(events and events[0][1] & (select.POLLHUP | select.POLLRDHUP))

    def _check_ipc(self) -> str | None:
        import msgspec

        from warden.ipc.errors import BadMessage
        from warden.ipc.wire import ENVELOPE_DECODER

        try:
            got = self._reader.read()
        except BadMessage as e:
            return str(e.reason)
        if got is None:
            self.open = False
            return None
        frame, fds = got
        for fd in fds:
            os.close(fd)
        try:
            _kind, method, _request, _payload = ENVELOPE_DECODER.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return f"invalid envelope: {e}"
        return f"method id {method} is not served (warden run serves no interface)"

"""The socket layer: SEQPACKET channel pairs and reading one frame with its fds, safely.

`FrameReader.read` enforces the frame-level rules before anything is decoded: a frame at or
over the size cap, a truncated frame (MSG_TRUNC), truncated control data (MSG_CTRUNC), too
many fds, or ancillary data other than SCM_RIGHTS is invalid, and every fd that arrived with
it is closed before the error is raised. Received fds are close-on-exec (MSG_CMSG_CLOEXEC).
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket
import struct
from collections.abc import Sequence

from warden.ipc.errors import BadMessage
from warden.ipc.limits import Limits

CHANNEL_FD_ENV = "WARDEN_CHANNEL_FD"
# Plain ints: socket.MSG_* are IntFlag members, whose `&` runs Python code on every frame.
RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC)
SEND_FLAGS = int(socket.MSG_NOSIGNAL)
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
TRUNCATED = _MSG_TRUNC | _MSG_CTRUNC  # returned flags also echo MSG_CMSG_CLOEXEC: ignore it
_FD_SIZE = array.array("i").itemsize
NO_FDS: tuple[int, ...] = ()


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A connected AF_UNIX SOCK_SEQPACKET pair, both ends close-on-exec.

    Keep one end; hand the other to the child (the supervisor maps it to fd 3 and sets
    WARDEN_CHANNEL_FD=3).
    """
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.set_inheritable(False)
    b.set_inheritable(False)
    return a, b


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) from SO_PEERCRED (for a socketpair: the creator of the pair)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class FrameReader:
    """Reads frames from one socket into a reused buffer of max_frame_bytes + 1."""

    __slots__ = ("_buf", "_max_fds", "_peer", "_sock", "anc_size", "bufs", "cap", "recv", "view")

    def __init__(self, sock: socket.socket, limits: Limits, peer: str) -> None:
        self._sock = sock
        self.cap = limits.max_frame_bytes
        self._max_fds = limits.max_fds_per_frame
        self._buf = bytearray(self.cap + 1)
        self.view = memoryview(self._buf)
        self.bufs = [self._buf]
        self.anc_size = socket.CMSG_SPACE(self._max_fds * _FD_SIZE)
        self._peer = peer
        # Hot loops inline `read`: recv(bufs, anc_size, RECV_FLAGS), and unless the result is a
        # plain frame (no ancillary data, no TRUNCATED flag, 0 < n < cap) hand it to `check`.
        self.recv = sock.recvmsg_into

    def release(self) -> None:
        """Drop the receive buffer (the channel is closed): a closed channel the embedder
        keeps must not keep max_frame_bytes alive.

        In place, so that the loops holding `bufs` and `view` as locals (and any traceback
        through them) let go of it too.
        """
        self.bufs.clear()
        with contextlib.suppress(BufferError):  # a slice still in use keeps it until freed
            self.view.release()
        self._buf = bytearray(0)
        self.view = memoryview(self._buf)
        self.bufs = [self._buf]
        self.cap = 0

    def read(self) -> tuple[memoryview, Sequence[int]] | None:
        """The next frame and its fds, or None at end of stream.

        Raises BlockingIOError when a non-blocking socket has nothing, BadMessage (fds
        already closed) when the frame breaks a frame-level rule.
        """
        n, anc, flags, _ = self.recv(self.bufs, self.anc_size, RECV_FLAGS)
        if anc or flags & TRUNCATED or not 0 < n < self.cap:
            return self.check(n, anc, flags)
        return self.view[:n], NO_FDS  # the common case: a well-sized frame, no fds

    def check(
        self, n: int, anc: list[tuple[int, int, bytes]], flags: int
    ) -> tuple[memoryview, Sequence[int]] | None:
        fds: list[int] = []
        foreign = None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(data[: len(data) - (len(data) % _FD_SIZE)])
                fds.extend(got)
            else:
                foreign = (level, kind)
        if flags & _MSG_CTRUNC:
            close_fds(fds)
            raise BadMessage(
                self._peer,
                f"control data truncated (more than {self._max_fds} fds, or other ancillary data)",
            )
        if foreign is not None:
            close_fds(fds)
            raise BadMessage(self._peer, f"unexpected ancillary data (level {foreign[0]}, "
                             f"type {foreign[1]})")
        if flags & _MSG_TRUNC or n > self.cap:
            close_fds(fds)
            raise BadMessage(self._peer, f"frame truncated: larger than the {self.cap}-byte cap")
        if n == self.cap:
            close_fds(fds)
            raise BadMessage(self._peer, f"frame of {n} bytes is at the {self.cap}-byte cap")
        if len(fds) > self._max_fds:
            close_fds(fds)
            raise BadMessage(self._peer, f"{len(fds)} fds in one frame (at most {self._max_fds})")
        if n == 0:
            if not fds and _hung_up(self._sock):
                return None
            close_fds(fds)
            raise BadMessage(self._peer, "empty frame")
        return self.view[:n], fds


def _hung_up(sock: socket.socket) -> bool:
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
    events = p.poll(0)
    return bool(events and events[0][1] & (select.POLLHUP | select.POLLRDHUP))


def send_frame(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send one frame (and its fds). Raises BlockingIOError if a non-blocking socket is full."""
    if fds:
        sock.sendmsg(
            [data],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
            SEND_FLAGS,
        )
    else:
        sock.send(data, SEND_FLAGS)

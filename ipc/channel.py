"""The socket layer: SEQPACKET channel pairs and reading one frame with its fds, safely.

`FrameReader.read` enforces the frame-level rules before anything is decoded: a frame at or
over the size cap, a truncated frame (MSG_TRUNC), truncated control data (MSG_CTRUNC), too
many fds, or ancillary data other than SCM_RIGHTS is invalid, and every fd that arrived with
it is closed before the error is raised. Received fds are close-on-exec (MSG_CMSG_CLOEXEC).
"""

from __future__ import annotations

import array
import contextlib
import socket
import struct
from collections.abc import Sequence
from typing import Any

from warden.ipc.errors import BadMessage
from warden.ipc.handles import fd_to_int
from warden.ipc.limits import Limits
from warden.ipc.lowlevel import close_all, fds_from_ancillary, hung_up, rights

CHANNEL_FD_ENV = "WARDEN_CHANNEL_FD"
# Plain ints: socket.MSG_* are IntFlag members, whose `&` runs Python code on every frame.
RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC)
SEND_FLAGS = int(socket.MSG_NOSIGNAL)
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
TRUNCATED = _MSG_TRUNC | _MSG_CTRUNC  # returned flags also echo MSG_CMSG_CLOEXEC: ignore it
_FD_SIZE = array.array("i").itemsize
NO_FDS: tuple[int, ...] = ()
# What an outgoing frame carries as its fds: fd numbers, or the objects that own them
# (handles, sockets, files). Carrying the owner keeps its fd open until the frame is sent
# (or queued with a copy), whatever else lets go of it.
Carried = Sequence[Any]


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


class FrameReader:
    """Reads frames from one socket into a reused buffer of max_frame_bytes + 1.

    `read` is the one frame-read path of the layer (both front-ends and the sandbox's channel
    guard call it). The fds of a frame it returns are the caller's to close or wrap; on
    every error it raises, they are already closed.
    """

    __slots__ = ("_anc_size", "_buf", "_bufs", "_max_fds", "_peer", "_recv", "_sock", "_view",
                 "cap")

    def __init__(self, sock: socket.socket, limits: Limits, peer: str) -> None:
        self._sock = sock
        self.cap = limits.max_frame_bytes
        self._max_fds = limits.max_fds_per_frame
        self._buf = bytearray(self.cap + 1)
        self._view = memoryview(self._buf)
        self._bufs = [self._buf]
        self._anc_size = socket.CMSG_SPACE(self._max_fds * _FD_SIZE)
        self._peer = peer
        self._recv = sock.recvmsg_into

    def release(self) -> None:
        """Drop the receive buffer (the channel is closed): a closed channel the embedder
        keeps must not keep max_frame_bytes alive. A read after this fails (the socket is
        closed first) and never touches the old buffer."""
        with contextlib.suppress(BufferError):  # a slice still in use keeps it until freed
            self._view.release()
        self._buf = bytearray(0)
        self._view = memoryview(self._buf)
        self._bufs = [self._buf]
        self.cap = 0

    def read(self) -> tuple[memoryview, Sequence[int]] | None:
        """The next frame and its fds, or None at end of stream.

        Raises BlockingIOError when a non-blocking socket has nothing, BadMessage (fds
        already closed) when the frame breaks a frame-level rule. The frame is a view of the
        reused buffer: decode it before the next read.
        """
        n, anc, flags, _ = self._recv(self._bufs, self._anc_size, RECV_FLAGS)
        if anc or flags & TRUNCATED or not 0 < n < self.cap:
            return self._check(n, anc, flags)
        return self._view[:n], NO_FDS  # the common case: a well-sized frame, no fds

    def _check(
        self, n: int, anc: list[tuple[int, int, bytes]], flags: int
    ) -> tuple[memoryview, Sequence[int]] | None:
        """The rare frame: one with fds, an odd size, a truncation, or the end of stream."""
        fds, foreign = fds_from_ancillary(anc)
        problem = None
        if flags & _MSG_CTRUNC:
            problem = (f"control data truncated (more than {self._max_fds} fds, or other "
                       "ancillary data)")
        elif foreign is not None:
            problem = f"unexpected ancillary data (level {foreign[0]}, type {foreign[1]})"
        elif flags & _MSG_TRUNC or n > self.cap:
            problem = f"frame truncated: larger than the {self.cap}-byte cap"
        elif n == self.cap:
            problem = f"frame of {n} bytes is at the {self.cap}-byte cap"
        elif len(fds) > self._max_fds:
            problem = f"{len(fds)} fds in one frame (at most {self._max_fds})"
        elif n == 0:
            if not fds and hung_up(self._sock.fileno()):
                return None
            problem = "empty frame"
        if problem is not None:
            close_all(fds)
            raise BadMessage(self._peer, problem)
        return self._view[:n], fds


def send_frame(sock: socket.socket, data: bytes, fds: Carried = NO_FDS) -> None:
    """Send one frame (and its fds). Raises BlockingIOError if a non-blocking socket is full.

    `fds` may hold the objects that own the fds (handles, sockets): they stay referenced,
    hence open, until sendmsg has passed the kernel its own copies.
    """
    if fds:
        sock.sendmsg([data], rights([fd_to_int(f) for f in fds]), SEND_FLAGS)
    else:
        sock.send(data, SEND_FLAGS)

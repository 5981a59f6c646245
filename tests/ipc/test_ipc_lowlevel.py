"""ipc's own OS helpers (ipc/lowlevel.py), on real sockets and fds."""

from __future__ import annotations

import os
import socket

from tests.ipc.helpers import open_fds
from warden.ipc import lowlevel


def test_scm_rights_round_trip_and_a_foreign_message_is_named() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        a.sendmsg([b"x"], lowlevel.rights([r, w]))
        _, anc, _, _ = b.recvmsg(16, socket.CMSG_SPACE(8), socket.MSG_CMSG_CLOEXEC)
        fds, foreign = lowlevel.fds_from_ancillary(anc)
        assert foreign is None
        assert len(fds) == 2
        assert [os.fstat(fd).st_ino for fd in fds] == [os.fstat(r).st_ino, os.fstat(w).st_ino]
        lowlevel.close_all(fds)
        # A truncated trailing int is ignored; anything but SCM_RIGHTS is reported.
        fds, foreign = lowlevel.fds_from_ancillary(
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, r.to_bytes(4, "little") + b"\x01\x02"),
             (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, b"")])
        assert fds == [r]
        assert foreign == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    finally:
        os.close(r)
        os.close(w)
        a.close()
        b.close()


def test_close_all_closes_each_and_ignores_the_ones_already_gone() -> None:
    before = open_fds()
    r, w = os.pipe()
    os.close(w)
    lowlevel.close_all([r, w, r])
    assert open_fds() == before


def test_hung_up_tells_end_of_stream_from_a_quiet_peer() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    assert not lowlevel.hung_up(a.fileno())
    assert lowlevel.poller(a.fileno())(0) == []  # nothing to read: asked, not waited
    b.send(b"x")
    assert lowlevel.poller(a.fileno())(0) != []
    b.close()
    assert lowlevel.hung_up(a.fileno())
    a.close()

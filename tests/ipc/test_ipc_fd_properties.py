"""Property test over the fd-kind matrix: any mix of fd kinds and counts sent to any
handle-taking method either decodes into handles of exactly the declared kinds or raises
BadMessage, and in both cases no fd is left open afterwards."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from collections.abc import Callable

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ipc.helpers import open_fds
from tests.ipc.ifaces import Service
from warden import ipc
from warden.ipc.session import Session
from warden.ipc.wire import KIND_CALL

_dir = tempfile.mkdtemp(prefix="ipc-fd-props-")
atexit.register(shutil.rmtree, _dir, True)
_file = os.path.join(_dir, "f")
with open(_file, "wb") as _f:
    _f.write(b"x")
_fifo = os.path.join(_dir, "fifo")
os.mkfifo(_fifo)


def _sealed() -> int:
    return ipc.SealedMemory.from_bytes(b"sealed").detach()


def _unsealed() -> int:
    return os.memfd_create("u", os.MFD_CLOEXEC)


def _sock() -> int:
    a, b = socket.socketpair()
    b.close()
    return a.detach()


def _seqpacket() -> int:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.close()
    return a.detach()


MAKERS: dict[str, Callable[[], int]] = {
    "ro": lambda: os.open(_file, os.O_RDONLY | os.O_CLOEXEC),
    "wo": lambda: os.open(_file, os.O_WRONLY | os.O_CLOEXEC),
    "rw": lambda: os.open(_file, os.O_RDWR | os.O_CLOEXEC),
    "path": lambda: os.open(_file, os.O_PATH | os.O_CLOEXEC),
    "dir": lambda: os.open(_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC),
    "fifo": lambda: os.open(_fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC),
    "stream": _sock,
    "seqpacket": _seqpacket,
    "udp": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach(),
    "netlink": lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).detach(),
    "eventfd": lambda: os.eventfd(0, os.EFD_CLOEXEC),
    "sealed": _sealed,
    "unsealed": _unsealed,
}

HANDLE_METHODS = {
    name: spec for name, spec in Service.__ipc_methods__.items() if spec.handles
}
PAYLOADS = {"read_file": {}, "write_file": {"data": b"x"}, "list_dir": {},
            "sock_send": {"data": b"x"}, "digest": {}, "adopt": {}}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(HANDLE_METHODS)), st.lists(st.sampled_from(sorted(MAKERS)),
                                                         max_size=3))
def test_any_fds_give_declared_handles_or_bad_message(method: str, kinds: list[str]) -> None:
    before = open_fds()
    spec = HANDLE_METHODS[method]
    server = Session(peer="p", serve=Service, remote=None, granted=frozenset(),
                     limits=ipc.DEFAULT_LIMITS)
    fds = [MAKERS[k]() for k in kinds]
    frame = msgspec.msgpack.encode((KIND_CALL, spec.id, 1, PAYLOADS[method]))
    try:
        _, _, _, args = server.decode(frame, fds)
    except ipc.BadMessage:
        pass
    else:
        handles = [a for a in args if isinstance(a, ipc.Handle)]
        assert [type(h) for h in handles] == [p.cls for p in spec.handles]
        for h in handles:
            assert h.check(h.fileno()) is None
            h.close()
        assert server.account.held == 0
    assert open_fds() == before

"""A raw peer passes fds of every wrong kind for every declared kind.

Each must end in a BadMessage naming the parameter, reach no handler, and leave the trusted
side's fd table as it was (run_hostile checks that, and that a bystander is still served).
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ipc.helpers import call, message, run_hostile, tmpfile
from tests.ipc.impls import ServiceImpl
from warden import ipc

GARBAGE = (b"\xc1", [])  # ends the channel should the frame before it have been accepted


class Recording(ServiceImpl):
    """Counts the handlers that ran: none may, for any of these frames."""

    def __init__(self) -> None:
        super().__init__()
        self.ran: list[str] = []

    def list_dir(self, ctx: ipc.Context, d: ipc.Directory) -> list[str]:
        self.ran.append("list_dir")
        return super().list_dir(ctx, d)

    def sock_send(self, ctx: ipc.Context, s: ipc.Socket, data: bytes) -> None:
        self.ran.append("sock_send")
        super().sock_send(ctx, s, data)

    def read_file(self, ctx: ipc.Context, f: ipc.ReadFile) -> bytes:
        self.ran.append("read_file")
        return super().read_file(ctx, f)


def _bound_socket_path(tmp_path: Path) -> tuple[socket.socket, str]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dir_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:  # through the directory's fd: a long tmp_path would be over sun_path's 108 bytes
        listener.bind(f"/proc/self/fd/{dir_fd}/s")
    finally:
        os.close(dir_fd)
    return listener, str(tmp_path / "s")


def test_an_o_path_directory_is_not_a_directory(tmp_path: Path) -> None:
    """fstat on an O_PATH fd reports the inode's type, so a type-only check passed it; the
    handler then failed on it (listdir: EBADF) instead of the peer being cut off."""
    impl = Recording()
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    out = run_hostile(lambda: [(call("list_dir", 1, {}), [fd]), GARBAGE], serve=impl)
    assert isinstance(out.reason, ipc.BadMessage)
    assert (out.reason.method, out.reason.field, out.reason.reason) == (
        "list_dir", "d", "fd 0 (d): expected a directory, got an O_PATH fd",
    )
    assert impl.ran == []


def test_an_o_path_socket_inode_is_not_a_socket(tmp_path: Path) -> None:
    """A socket's inode opened with O_PATH: S_ISSOCK, yet no socket at all."""
    impl = Recording()
    listener, path = _bound_socket_path(tmp_path)
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        out = run_hostile(
            lambda: [(call("sock_send", 1, {"data": b"x"}), [fd]), GARBAGE], serve=impl
        )
    finally:
        listener.close()
    assert isinstance(out.reason, ipc.BadMessage)
    assert out.reason.reason == "fd 0 (s): expected a socket, got an O_PATH fd"
    assert impl.ran == []


def test_an_o_path_socket_inode_is_not_a_channel_endpoint(tmp_path: Path) -> None:
    listener, path = _bound_socket_path(tmp_path)
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        out = run_hostile(lambda: [(call("adopt", 1, {}), [fd])])
    finally:
        listener.close()
    assert isinstance(out.reason, ipc.BadMessage)
    assert out.reason.reason == "fd 0 (endpoint): expected a channel endpoint, got an O_PATH fd"


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC)


def _epoll() -> int:
    ep = select.epoll()
    try:
        return os.dup(ep.fileno())
    finally:
        ep.close()


def _pidfd() -> int:
    return os.pidfd_open(os.getpid())


def _partly_sealed_memfd() -> int:
    import fcntl

    fd = os.memfd_create("x", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, b"data")
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK)  # may grow
    return fd


ODD_FDS: dict[str, Callable[[], int]] = {
    "eventfd": _eventfd, "epoll": _epoll, "pidfd": _pidfd,
    "memfd missing F_SEAL_GROW": _partly_sealed_memfd,
}
# method, parameters, the parameter's name: one per handle kind
KINDS = [
    ("read_file", {}, "f"), ("write_file", {"data": b""}, "f"), ("list_dir", {}, "d"),
    ("sock_send", {"data": b""}, "s"), ("digest", {}, "mem"), ("adopt", {}, "endpoint"),
]


@pytest.mark.parametrize("odd", sorted(ODD_FDS))
def test_kernel_objects_that_are_no_declared_kind_are_refused(odd: str) -> None:
    """An eventfd read blocks the reader, an epoll fd reads nothing: neither is a file.
    (An eventfd passed as a ReadFile would stall the loop in the handler's read.)"""
    for method, params, name in KINDS:
        if odd.startswith("memfd") and method in ("read_file", "write_file"):
            continue  # a memfd is a regular file: legitimately a ReadFile/WriteFile
        fd = ODD_FDS[odd]()
        out = run_hostile(lambda m=method, p=params, f=fd: [(call(m, 1, p), [f]), GARBAGE])
        assert isinstance(out.reason, ipc.BadMessage), (odd, method)
        assert (out.reason.method, out.reason.field) == (method, name), (odd, out.reason)
        assert out.reason.reason.startswith(f"fd 0 ({name}): expected "), out.reason


def test_a_write_only_sealed_memfd_is_not_sealed_memory() -> None:
    """Reopened through /proc with O_WRONLY, a sealed memfd keeps its seals but cannot be
    mapped: it passed the seal check and failed in the handler's map()."""
    mem = ipc.SealedMemory.from_bytes(b"payload")
    fd = os.open(f"/proc/self/fd/{mem.fileno()}", os.O_WRONLY | os.O_CLOEXEC)
    mem.close()
    out = run_hostile(lambda: [(call("digest", 1, {}), [fd]), GARBAGE])
    assert isinstance(out.reason, ipc.BadMessage)
    assert (out.reason.method, out.reason.field, out.reason.reason) == (
        "digest", "mem", "fd 0 (mem): expected a sealed memfd open for reading, got a "
        "write-only fd",
    )


def test_a_plain_fd_for_a_method_that_declares_none(tmp_path: Path) -> None:
    """fds on a call, or a one-way message, whose method takes none: refused, closed."""
    out = run_hostile(lambda: [(call("whoami", 1, {}), [tmpfile(tmp_path, "f")])])
    assert isinstance(out.reason, ipc.BadMessage)
    assert out.reason.reason == "expected 0 fds, got 1"
    fd = tmpfile(tmp_path, "g")
    out = run_hostile(lambda: [(message("log", {"line": "x"}), [fd])])
    assert isinstance(out.reason, ipc.BadMessage)
    assert out.reason.reason == "expected 0 fds, got 1"


def test_an_empty_frame_with_fds_is_not_end_of_stream(tmp_path: Path) -> None:
    out = run_hostile(lambda: [(b"", [tmpfile(tmp_path, "f"), tmpfile(tmp_path, "g")])])
    assert isinstance(out.reason, ipc.BadMessage)
    assert out.reason.reason == "empty frame"

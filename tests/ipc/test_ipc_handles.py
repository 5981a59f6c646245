"""Handle kinds on their own: sealed memory really is immutable, checks name what they saw."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os

import pytest

from warden import ipc
from warden.ipc.handles import REQUIRED_SEALS


def test_sealed_memory_cannot_be_written_resized_or_unsealed() -> None:
    mem = ipc.SealedMemory.from_bytes(b"immutable")
    fd = mem.fileno()
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    assert seals & REQUIRED_SEALS == REQUIRED_SEALS and seals & fcntl.F_SEAL_SEAL
    with pytest.raises(PermissionError):
        os.pwrite(fd, b"X", 0)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 1)
    with pytest.raises(PermissionError):
        mmap.mmap(fd, 9, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    with pytest.raises(PermissionError):
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 0)  # F_SEAL_SEAL: the seal set is final
    assert mem.read() == b"immutable"
    with mem.map() as m:
        assert m[:] == b"immutable"
    mem.close()
    assert mem.closed


def test_writer_cannot_seal_while_someone_maps_it_writable() -> None:
    w = ipc.MemoryWriter(4096)
    assert isinstance(w.buffer, mmap.mmap)
    other = mmap.mmap(w._fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    with pytest.raises(OSError) as e:
        w.seal()
    assert e.value.errno == errno.EBUSY  # F_SEAL_WRITE refuses while a writable map exists
    other.close()


def test_empty_sealed_memory() -> None:
    mem = ipc.SealedMemory.from_bytes(b"")
    assert mem.size == 0 and mem.read() == b""
    with pytest.raises(ValueError, match="cannot be mapped"):
        mem.map()
    mem.close()


def test_handle_ownership() -> None:
    r, w = os.pipe()
    h = ipc.Socket(r)
    assert ipc.Socket.check(r) == "expected a socket, got a FIFO"
    assert h.detach() == r and h.closed
    with pytest.raises(ValueError, match="Socket is closed"):
        h.fileno()
    os.close(r)
    with ipc.ReadFile(w) as f:
        assert f.fileno() == w
    with pytest.raises(OSError):
        os.fstat(w)  # closed by the with-block

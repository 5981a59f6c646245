"""Typed handles: fds that travel with a message, each kind checked on arrival.

A method parameter annotated with one of these classes travels as an fd in the frame's
SCM_RIGHTS, in declaration order. On arrival the fd is checked with fstat (file type),
fcntl F_GETFL (access mode) and, for sealed memory, F_GET_SEALS; an fd of the wrong kind
makes the whole message a `BadMessage`. A received handle owns its fd: close it (or use
``with``) when done; it is closed on garbage collection otherwise. Every received handle is
also known to its channel's `FdAccount`, which closes the ones still open when the channel
closes because the peer misbehaved (`BadMessage`, `CutOff`): take the fd over (`detach`,
`open`, `socket`) to keep it past that.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import socket
import stat
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

if TYPE_CHECKING:
    from warden.ipc.interface import Interface

IfaceT = TypeVar("IfaceT", bound="Interface")

REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class FdAccount:
    """The handles made from one peer's fds that are still open in our process.

    Their number is the peer's `max_fds_held` quota; `close` closes every one of them, which
    the channel does when it closes because the peer misbehaved, so no fd of a hostile peer
    stays open whatever the embedder, a handler, a traceback or a close reason still
    references. A handle leaves the account when it is closed, collected or detached.
    """

    __slots__ = ("_live",)

    def __init__(self) -> None:
        # fd -> the handle owning it. Weak: a handle a handler drops must still close (and
        # leave the account) when collected.
        self._live: dict[int, weakref.ref[Handle]] = {}

    @property
    def held(self) -> int:
        return len(self._live)

    def adopt(self, handle: Handle) -> None:
        self._live[handle._fd] = weakref.ref(handle)
        handle._account = self

    def forget(self, fd: int) -> None:
        self._live.pop(fd, None)

    def close(self) -> None:
        """Close every handle of the account still open (each stops counting)."""
        while self._live:
            _fd, ref = self._live.popitem()
            handle = ref()
            if handle is not None:  # None: being collected, its finalizer closes the fd
                handle.close()


def _describe(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "an unknown file type"


def _access(flags: int) -> str:
    if flags & os.O_PATH:
        return "O_PATH"
    return {os.O_RDONLY: "read-only", os.O_WRONLY: "write-only", os.O_RDWR: "read-write"}.get(
        flags & os.O_ACCMODE, "unknown access mode"
    )


def fd_to_int(obj: Any) -> int:
    """An fd number from an int, a handle, a socket or any object with ``fileno()``."""
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj
    fileno = getattr(obj, "fileno", None)
    if fileno is None:
        raise TypeError(f"expected an fd, a handle or an object with fileno(), got {obj!r}")
    fd = fileno()
    if not isinstance(fd, int):
        raise TypeError(f"{obj!r}.fileno() returned {fd!r}")
    return fd


class Handle:
    """An owned file descriptor of a declared kind. Subclasses define `check`."""

    kind: ClassVar[str] = "fd"
    __slots__ = ("__weakref__", "_account", "_fd")

    def __init__(self, fd: int, *, _account: FdAccount | None = None) -> None:
        """Take ownership of `fd` (no check: `check` runs on received fds before this)."""
        self._fd = fd
        self._account: FdAccount | None = None
        if _account is not None:  # a received fd: its channel's account knows the handle
            _account.adopt(self)

    @classmethod
    def check(cls, fd: int) -> str | None:
        """None if `fd` is acceptable as this kind, else the reason it is not."""
        return None

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{type(self).__name__} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _release(self) -> int:
        fd, self._fd = self._fd, -1
        if fd >= 0 and self._account is not None:
            self._account.forget(fd)
            self._account = None
        return fd

    def detach(self) -> int:
        """Give up ownership and return the fd (it no longer counts against the peer's quota)."""
        fd = self._release()
        if fd < 0:
            raise ValueError(f"{type(self).__name__} is closed")
        return fd

    def close(self) -> None:
        fd = self._release()
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._fd}>"


def close_if_handle(value: Any) -> None:
    """Close `value` if it is a handle (a decoded value no one will receive)."""
    if isinstance(value, Handle):
        value.close()


def _regular_with_access(fd: int, what: str, modes: tuple[int, ...]) -> str | None:
    st = os.fstat(fd)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not stat.S_ISREG(st.st_mode):
        return f"expected {what}, got {_describe(st.st_mode)}"
    if flags & os.O_PATH or (flags & os.O_ACCMODE) not in modes:
        return f"expected {what}, got a {_access(flags)} fd"
    return None


class ReadFile(Handle):
    """A regular file open for reading (O_RDONLY or O_RDWR)."""

    kind = "read_file"
    __slots__ = ()

    @classmethod
    def check(cls, fd: int) -> str | None:
        return _regular_with_access(fd, "a regular file open for reading", (os.O_RDONLY, os.O_RDWR))

    def open(self) -> Any:
        """A binary file object that takes over the fd."""
        return os.fdopen(self.detach(), "rb")


class WriteFile(Handle):
    """A regular file open for writing (O_WRONLY or O_RDWR)."""

    kind = "write_file"
    __slots__ = ()

    @classmethod
    def check(cls, fd: int) -> str | None:
        return _regular_with_access(fd, "a regular file open for writing", (os.O_WRONLY, os.O_RDWR))

    def open(self) -> Any:
        """A binary file object that takes over the fd."""
        return os.fdopen(self.detach(), "wb")


def _o_path(fd: int, what: str) -> str | None:
    """The reason an O_PATH fd is refused as `what`, or None when `fd` is not one.

    fstat works on an O_PATH fd and reports the inode's type, so a kind checked by file type
    alone would accept one: a directory that cannot be listed, a socket's inode on disk that
    is no socket at all. Every kind refuses it.
    """
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH:
        return f"expected {what}, got an O_PATH fd"
    return None


class Directory(Handle):
    """A directory fd (for openat-style access under it)."""

    kind = "directory"
    __slots__ = ()

    @classmethod
    def check(cls, fd: int) -> str | None:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            return f"expected a directory, got {_describe(st.st_mode)}"
        return _o_path(fd, "a directory")


class Socket(Handle):
    """Any socket (a connected TCP stream, a UNIX socket...)."""

    kind = "socket"
    __slots__ = ()

    @classmethod
    def check(cls, fd: int) -> str | None:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            return f"expected a socket, got {_describe(st.st_mode)}"
        return _o_path(fd, "a socket")

    def socket(self) -> socket.socket:
        """A socket object that takes over the fd."""
        return socket.socket(fileno=self.detach())


class SealedMemory(Handle):
    """A memfd sealed against write, grow and shrink: its bytes can be mapped and trusted.

    Because F_SEAL_WRITE cannot be set while a writable mapping exists and seals cannot be
    removed, the receiver can read the mapping without the sender changing it underneath.
    """

    kind = "sealed_memory"
    __slots__ = ()

    @classmethod
    def check(cls, fd: int) -> str | None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return f"expected a sealed memfd, got {_describe(st.st_mode)}"
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            return "expected a sealed memfd, got a file that does not support seals"
        if seals & REQUIRED_SEALS != REQUIRED_SEALS:
            return "expected a sealed memfd, got one missing F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE"
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if flags & os.O_PATH:
            return "expected a sealed memfd, got an O_PATH fd"
        if flags & os.O_ACCMODE not in (os.O_RDONLY, os.O_RDWR):
            # A memfd reopened through /proc/self/fd/N with O_WRONLY keeps its seals but
            # cannot be mapped or read: the kind promises bytes to read.
            return f"expected a sealed memfd open for reading, got a {_access(flags)} fd"
        return None

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, name: str = "warden") -> SealedMemory:
        """A new sealed memfd holding a copy of `data`."""
        writer = MemoryWriter(len(data), name)
        if len(data):
            writer.buffer[:] = data
        return writer.seal()

    @property
    def size(self) -> int:
        return os.fstat(self.fileno()).st_size

    def map(self) -> mmap.mmap:
        """A read-only shared mapping of the whole region (ValueError if it is empty)."""
        size = self.size
        if size == 0:
            raise ValueError("an empty SealedMemory cannot be mapped; read() returns b''")
        return mmap.mmap(self.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ)

    def read(self) -> bytes:
        """A copy of the whole region."""
        if self.size == 0:
            return b""
        with self.map() as m:
            return m[:]


class MemoryWriter:
    """Build a sealed memfd in place: write into `buffer`, then `seal()`."""

    def __init__(self, size: int, name: str = "warden") -> None:
        self._fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self._fd, size)
            self.buffer: mmap.mmap | memoryview = (
                mmap.mmap(self._fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                if size
                else memoryview(b"")
            )
        except BaseException:
            os.close(self._fd)
            raise

    def seal(self) -> SealedMemory:
        """Unmap, seal (shrink, grow, write, seal) and return the read-only handle."""
        self.buffer.close() if isinstance(self.buffer, mmap.mmap) else self.buffer.release()
        fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, REQUIRED_SEALS | fcntl.F_SEAL_SEAL)
        fd, self._fd = self._fd, -1
        return SealedMemory(fd)

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            with contextlib.suppress(Exception):
                self.buffer.close() if isinstance(self.buffer, mmap.mmap) else None
            os.close(self._fd)


def _seqpacket_unix(fd: int) -> str | None:
    st = os.fstat(fd)
    if not stat.S_ISSOCK(st.st_mode):
        return f"expected a channel endpoint, got {_describe(st.st_mode)}"
    problem = _o_path(fd, "a channel endpoint")
    if problem is not None:
        return problem
    probe = socket.socket(fileno=os.dup(fd))
    try:
        family, kind = probe.family, probe.type
    finally:
        probe.close()
    if family != socket.AF_UNIX or kind != socket.SOCK_SEQPACKET:
        return (
            "expected a channel endpoint (AF_UNIX SOCK_SEQPACKET), "
            f"got {getattr(family, 'name', family)} {getattr(kind, 'name', kind)}"
        )
    return None


class _Endpoint(Handle, Generic[IfaceT]):
    __slots__ = ("interface",)

    def __init__(
        self, fd: int, *, _account: FdAccount | None = None, interface: type[IfaceT] | None = None
    ) -> None:
        super().__init__(fd, _account=_account)
        self.interface: type[IfaceT] | None = interface

    @classmethod
    def check(cls, fd: int) -> str | None:
        return _seqpacket_unix(fd)

    def socket(self) -> socket.socket:
        """The endpoint as a socket object (takes over the fd)."""
        return socket.socket(fileno=self.detach())


class Remote(_Endpoint[IfaceT]):
    """A channel endpoint whose far side serves interface `I`: the holder calls `I` on it.

    Annotate a parameter ``Remote[Narrow]``; the receiver turns it into a channel with
    ``ipc.connect(handle)`` (blocking) or ``ipc.attach(handle.socket(), remote=Narrow, ...)``.
    """

    kind = "remote"
    __slots__ = ()


class Receiver(_Endpoint[IfaceT]):
    """A channel endpoint on which the holder is expected to serve interface `I`."""

    kind = "receiver"
    __slots__ = ()

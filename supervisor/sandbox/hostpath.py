"""Host paths warden opens with its own rights: resolved once, acted on through the fd.

Parent, outside the sandbox, with the supervisor's privilege. Every path a
user names (a `--file`, the `--json-status` file, a bind source, `warden
serve`'s config and socket directory) comes through here, so one rule holds
for all of them (docs/host-side.md):

- one resolution, by the kernel (openat2), with no symbolic link followed
  anywhere in the path unless the caller passes `follow=True` (the user asked
  for it by name). A directory an earlier sandbox could write is exactly
  where a link to a root-only file gets planted; a per-component check in
  Python could be raced by a rename, openat2 cannot;
- what happens next happens to that fd (fstat for the kind, open_tree for a
  bind), never to the path again;
- an open never blocks: O_NONBLOCK (a FIFO without a writer, a tty, a
  device would otherwise wait), cleared once the kind is known to be fine;
- only a regular file (a directory, for a bind source) unless the caller
  names the other kinds it accepts;
- a refusal is a HostPathError whose text is one sentence naming the path.

Nothing here is specific to the sandbox or to profiles: it needs only `os`
and the raw calls in `_sys`, so any part of warden can use it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Collection

from warden.errors import InvalidInput
from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.errors import SandboxError

# What a kind is called in messages and in the names callers pass in `kinds`.
KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
         stat.S_IFIFO: "fifo", stat.S_IFCHR: "device", stat.S_IFBLK: "device",
         stat.S_IFSOCK: "socket"}
_SPELLED = {"file": "a regular file", "directory": "a directory", "symlink": "a symbolic link",
            "fifo": "a FIFO", "device": "a device", "socket": "a socket"}

_NO_LINKS = _sys.RESOLVE_NO_SYMLINKS | _sys.RESOLVE_NO_MAGICLINKS
_openat2_missing = False


class HostPathError(SandboxError, InvalidInput, OSError):
    """A host path was refused or could not be opened; str() is one sentence naming it."""

    def __init__(self, err: int, sentence: str, path: str) -> None:
        super().__init__(err, sentence)
        self.path = path
        self.sentence = sentence

    def __str__(self) -> str:
        return self.sentence


def kind_of(mode: int) -> str:
    """'file', 'directory', 'symlink', 'fifo', 'device' or 'socket'."""
    return KINDS.get(stat.S_IFMT(mode), "special file")


def identity(st: os.stat_result) -> tuple[int, int]:
    """(st_dev, st_ino): what makes two opens the same file, whatever their names."""
    return st.st_dev, st.st_ino


def _first_link(path: str) -> str | None:
    """The first component of `path` that is a symbolic link (for the message only)."""
    parts = path.split("/")
    for i in range(2, len(parts) + 1):
        prefix = "/".join(parts[:i])
        try:
            if stat.S_ISLNK(os.lstat(prefix).st_mode):
                return prefix
        except OSError:
            return None
    return None


def _refusal(err: int, what: str, path: str, follow_hint: str) -> HostPathError:
    """The one sentence for an open that failed with `err`."""
    if err == errno.ELOOP:
        link = _first_link(path) or path
        where = "it" if link == path else link
        return HostPathError(err, f"{what}: {path} was refused: {where} is a symbolic link, and "
                             "warden follows no link in a host path it opens with its own "
                             f"rights; name the real path{follow_hint}", path)
    if err == errno.ENXIO:
        return HostPathError(err, f"{what}: {path} was refused: it is a FIFO with no reader, "
                             "or a socket, and warden does not wait in open", path)
    if err == errno.ENOENT:
        return HostPathError(err, f"{what}: {path} does not exist (or a directory on its way "
                             "does not)", path)
    return HostPathError(err, f"{what}: {path}: {os.strerror(err)}", path)


def _open_walk(path: str, flags: int, mode: int) -> int:
    """Before Linux 5.6 (no openat2): one component at a time, each opened O_PATH|O_NOFOLLOW
    relative to the one before, so a link anywhere fails the walk (ELOOP/ENOTDIR).
    A relative path starts from the working directory, as openat2(AT_FDCWD) does."""
    parts = [p for p in path.split("/") if p]
    start = "/" if path.startswith("/") else "."
    dirfd = os.open(start, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC,
                              dir_fd=dirfd)
            except NotADirectoryError:
                st = os.stat(part, dir_fd=dirfd, follow_symlinks=False)
                raise OSError(errno.ELOOP if stat.S_ISLNK(st.st_mode) else errno.ENOTDIR,
                              path) from None
            os.close(dirfd)
            dirfd = nxt
        if not parts:
            return os.open(start, flags, mode)
        return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=dirfd)
    finally:
        os.close(dirfd)


def _open(path: str, flags: int, mode: int, follow: bool, dir_fd: int | None = None) -> int:
    """One resolution of the absolute `path` (or of a name in `dir_fd`): no link
    anywhere unless `follow`."""
    global _openat2_missing
    flags |= os.O_CLOEXEC
    if follow:
        return os.open(path, flags, mode, dir_fd=dir_fd)
    flags |= os.O_NOFOLLOW
    if dir_fd is not None and ("/" in path or path in ("", ".", "..")):
        raise OSError(errno.EINVAL, f"{path!r} is not a name in a directory")
    if not _openat2_missing:
        for _attempt in range(8):
            try:
                return _sys.openat2(_sys.AT_FDCWD if dir_fd is None else dir_fd,
                                    os.fsencode(path), flags, mode, _NO_LINKS)
            except OSError as e:
                # EAGAIN: a concurrent rename made the kernel give up on this
                # lookup; an attempt later sees a settled tree.
                if e.errno == errno.EAGAIN:
                    continue
                if e.errno != errno.ENOSYS:
                    raise
                _openat2_missing = True
                break
        else:
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    if dir_fd is not None:
        return os.open(path, flags, mode, dir_fd=dir_fd)
    return _open_walk(path, flags, mode)


def _check_kind(fd: int, what: str, path: str, allowed: Collection[str],
                name_hint: str) -> os.stat_result:
    st = os.fstat(fd)
    kind = kind_of(st.st_mode)
    if kind not in allowed:
        os.close(fd)
        raise HostPathError(errno.EINVAL, f"{what}: {path} was refused: it is "
                            f"{_SPELLED.get(kind, 'a special file')}, and warden opens only "
                            f"{' or '.join(_SPELLED[k] for k in sorted(allowed) if k in _SPELLED)}"
                            f"{name_hint.format(kind=kind) if kind in ('fifo', 'device') else ''}",
                            path)
    return st


def open_file(path: str, flags: int, what: str, *, follow: bool = False,
              kinds: Collection[str] = (), create_mode: int = 0o666,
              kind_hint: str = "", follow_hint: str = "", dir_fd: int | None = None,
              shown: str | None = None) -> int:
    """Open the absolute `path` with `flags` (O_RDONLY/O_WRONLY/O_RDWR, O_CREAT, O_APPEND)
    under the host-path rule; returns a blocking, close-on-exec fd of a regular file (or
    of one of `kinds`: "fifo", "device"). O_TRUNC is applied only after the kind check.
    With `dir_fd`, `path` is a name in that directory and `shown` the whole path.

    `what` starts the error sentence (the option as the user wrote it); `kind_hint`
    (with {kind}) and `follow_hint` say how to ask for the refused kind or for a link."""
    truncate = bool(flags & os.O_TRUNC)
    flags &= ~os.O_TRUNC
    try:
        fd = _open(path, flags | os.O_NONBLOCK | os.O_NOCTTY, create_mode, follow, dir_fd)
    except OSError as e:
        raise _refusal(e.errno or errno.EIO, what, shown or path, follow_hint) from None
    st = _check_kind(fd, what, shown or path, {"file", *kinds}, kind_hint)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if truncate and stat.S_ISREG(st.st_mode):
            os.ftruncate(fd, 0)
    except OSError as e:
        os.close(fd)
        raise _refusal(e.errno or errno.EIO, what, shown or path, follow_hint) from None
    return fd


def open_input(path: str, what: str, *, follow: bool = False,
               kinds: Collection[str] = ()) -> int:
    """A regular file to read (a config, a `--file PATH:r`)."""
    return open_file(path, os.O_RDONLY, what, follow=follow, kinds=kinds)


def open_output(name: str, dir_fd: int, what: str, shown: str, *,
                create_mode: int = 0o666) -> int:
    """A regular file to write later (a status record): `name` in the directory
    `dir_fd` (from open_path), created if missing, opened now. The write goes
    through this fd, so what is at the path by then does not matter. `shown`
    is the whole path, for messages."""
    return open_file(name, os.O_WRONLY | os.O_CREAT, what, create_mode=create_mode,
                     dir_fd=dir_fd, shown=shown)


def open_path(path: str, what: str, *, follow: bool = False) -> tuple[int, os.stat_result]:
    """An O_PATH fd of `path` itself (a trailing link is the link) and its fstat.

    O_PATH opens nothing (no FIFO wait, no device open), so every kind is returned;
    the caller decides from the stat which it accepts."""
    try:
        fd = _open(path, os.O_PATH, 0, follow)
    except OSError as e:
        raise _refusal(e.errno or errno.EIO, what, path, "") from None
    return fd, os.fstat(fd)


def open_bind_source(path: str, what: str) -> tuple[int, os.stat_result]:
    """The O_PATH fd a bind is made from, and its stat; refuses FIFOs and devices.

    A link as the last component is returned as the link itself (the sandbox gets
    that link, warden does not follow it); a link before it is refused."""
    fd, st = open_path(path, what)
    if kind_of(st.st_mode) not in ("directory", "file", "symlink", "socket"):
        os.close(fd)
        raise HostPathError(errno.EINVAL, f"{what}: {path} was refused: it is "
                            f"{_SPELLED.get(kind_of(st.st_mode), 'a special file')}; warden "
                            "binds directories, regular files, unix sockets and links only",
                            path)
    return fd, st


def ancestors(dir_fd: int) -> list[tuple[int, int]]:
    """Identities of the directory `dir_fd` and of each one above it, up to /.

    Walks "..", which the kernel resolves across mount points, so a directory
    reached through another bind mount of the same tree yields the same identities."""
    out: list[tuple[int, int]] = []
    cur = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        while (ident := identity(os.fstat(cur))) not in out:
            out.append(ident)
            up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = up
    finally:
        os.close(cur)
    return out

"""The child's filesystem view: a fresh tmpfs root holding only what was bound in.

Runs in the child, inside its new mount namespace, in bubblewrap's order:
make every mount private; mount a scratch tmpfs and pivot into it with the
host root kept at /oldroot; build the new root (a tmpfs) from /oldroot
paths; pivot into the new root and detach the old one, so nothing of the
host stays reachable. Read-only binds are made read-only recursively
(mount_setattr), every bind gets nosuid and nodev, /proc is a fresh procfs
of the new PID namespace, /dev holds five device binds, a size-capped
/dev/shm tmpfs and a private devpts at /dev/pts (with /dev/ptmx), and /tmp
is a size-capped tmpfs. The root itself ends read-only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import stat
from typing import NamedTuple

from warden.errors import InvalidInput
from warden.supervisor.sandbox import _sys, hostpath
from warden.supervisor.sandbox.errors import SandboxError

DEV_NODES = ("null", "zero", "full", "random", "urandom")
PTY_MAX = 64  # pseudo-terminals a sandbox may hold open at once (its devpts "max")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))


class MountError(SandboxError, InvalidInput, OSError):
    """A mount step failed; `str()` names the path."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the sentence, without "[Errno N]"


class MountOp(NamedTuple):
    """One prepared mount, with paths already encoded; built in the parent."""

    kind: str  # "bind", "symlink", "tmpfs", "data", "dir"
    source: bytes  # host path (bind), link target (symlink), contents (data), b"" (tmpfs, dir)
    dest: bytes  # path inside the sandbox
    writable: bool = False
    is_dir: bool = True
    size: int = 0
    # A bind's source as a detached mount tree the parent cloned with its own
    # rights (open_tree), or -1: the child binds the path itself.
    tree_fd: int = -1
    # The identity (st_dev, st_ino) of the source the parent resolved; a child
    # that binds the path itself checks it found that same file.
    dev: int = 0
    ino: int = 0
    # An idmapped bind (--ro-bind-owned, --bind-owned): the source's owner is the
    # sandbox's own id.
    owned: bool = False
    # A writable owned bind: the set-id and file-capability programs the parent found
    # in it, and the directories above each (relative paths, shallowest first). The
    # child binds each onto itself (_pin), so the sandbox cannot rename one into place.
    pins: tuple[bytes, ...] = ()


def parent_plan(binds: tuple[tuple[str, str, bool], ...],
               tmpfs: tuple[tuple[str, int], ...],
               data: tuple[tuple[str, bytes], ...] = (),
               symlinks: tuple[tuple[str, str], ...] = (),
               dirs: tuple[str, ...] = (),
               owned: tuple[bool, ...] = ()) -> tuple[MountOp, ...]:
    """Order mounts parents-first. Touches no file: `parent_detach` resolves the sources.

    `data`: (dest, contents) of read-only files; `symlinks`: (dest, target); `dirs`:
    directories to make. All are made in the child like the binds' mount points."""
    ops = [MountOp("bind", os.fsencode(src), os.fsencode(dst), writable,
                   owned=i < len(owned) and owned[i])
           for i, (src, dst, writable) in enumerate(binds)]
    ops.extend(MountOp("tmpfs", b"", os.fsencode(d), True, True, size) for d, size in tmpfs)
    ops.extend(MountOp("data", contents, os.fsencode(d), False, False) for d, contents in data)
    ops.extend(MountOp("symlink", os.fsencode(t), os.fsencode(d)) for d, t in symlinks)
    ops.extend(MountOp("dir", b"", os.fsencode(d)) for d in dirs)
    ops.sort(key=lambda op: op.dest.count(b"/"))
    return tuple(ops)


MOUNT_ATTR_IDMAP = 0x00100000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _idmap_userns(uid_map: bytes, gid_map: bytes) -> int:
    """Parent, as root: an fd of a new user namespace with these maps (it holds no
    process once this returns), for MOUNT_ATTR_IDMAP."""
    r, w = os.pipe()
    pid = _sys.clone(_sys.CLONE_NEWUSER | signal.SIGCHLD)
    if pid == 0:  # only waits to be read from /proc, then ends
        try:
            os.close(w)
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    try:
        for name, text in ((b"uid_map", uid_map), (b"gid_map", gid_map)):
            fd = os.open(b"/proc/%d/%s" % (pid, name), os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text)
            finally:
                os.close(fd)
        return os.open(b"/proc/%d/ns/user" % pid, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(w)  # the process reads end-of-file and ends
        with contextlib.suppress(ChildProcessError):  # an embedder's reaper took it
            os.waitpid(pid, 0)


def _plain(op: MountOp) -> str:
    """The option binding it without owned, for an error's fix."""
    return "--bind" if op.writable else "--ro-bind"


def _idmap(tree_fd: int, st: os.stat_result, ids: tuple[int, int], what: str,
           plain: str) -> None:
    """Make the detached tree an idmapped mount: the source's owner (uid, gid) appears
    as the sandbox's outer ids `ids`, which its user namespace maps to its own id."""
    # An id on disk is read as an id inside this namespace; the mount shows it as the
    # outer id the map makes of it (and writes map back the other way).
    userns = _idmap_userns(b"%d %d 1\n" % (st.st_uid, ids[0]),
                           b"%d %d 1\n" % (st.st_gid, ids[1]))
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns)
        _sys.syscall("mount_setattr", ctypes.c_int(tree_fd), b"",
                     ctypes.c_uint(_sys.AT_EMPTY_PATH | _sys.AT_RECURSIVE),
                     ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM):
            raise MountError(e.errno, f"{what}: this kernel or filesystem cannot make an "
                             f"idmapped mount ({os.strerror(e.errno)}; Linux 5.12+ and a "
                             "filesystem that supports them are needed, below every submount "
                             f"too): bind it with {plain} instead, and give the "
                             "sandbox's uid access there (a fixed --outer-uid and chown, or an "
                             "ACL)") from None
        raise
    finally:
        os.close(userns)


# More set-id programs than this in one writable owned bind: refused (each is a mount).
MAX_PINS = 256
_CAPABILITY_XATTR = "security.capability"


def _privileged(st: os.stat_result, dir_fd: int, name: str) -> bool:
    """A regular file that gains privilege when executed: set-uid, set-gid (with group
    execute; without it the bit means mandatory locking), or a file capability."""
    if not stat.S_ISREG(st.st_mode):
        return False
    if st.st_mode & stat.S_ISUID or (st.st_mode & stat.S_ISGID and st.st_mode & stat.S_IXGRP):
        return True
    try:
        # The name in the directory fd, through the fd's /proc link: no path is looked
        # up again from the root, and a link as the name is not followed.
        os.getxattr(f"/proc/self/fd/{dir_fd}/{name}", _CAPABILITY_XATTR, follow_symlinks=False)
    except OSError:
        return False
    return True


def _pins(fd: int, what: str, plain: str) -> tuple[bytes, ...]:
    """Parent, privileged: every privileged program (`_privileged`) in the tree at the
    O_PATH directory `fd`, with each directory above it, as paths relative to it.

    A writable owned bind lets the sandbox rename what is there as the owner could:
    an existing setuid-root program moved onto the name of a script the host runs
    keeps its mode (rename(2) changes no bits), and the guard filter cannot see a
    file's mode. A mount point cannot be renamed, replaced or unlinked (EBUSY), so
    each such program, and each directory on its way, is bound onto itself in the
    sandbox. Walked through fds, no link followed."""
    found: set[bytes] = set()
    top = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    stack: list[tuple[int, bytes]] = [(top, b"")]
    try:
        while stack:
            dfd, rel = stack.pop()
            try:
                with os.scandir(dfd) as entries:
                    for entry in entries:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        sub = rel + os.fsencode(entry.name)
                        if stat.S_ISDIR(st.st_mode):
                            try:
                                child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY
                                                | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                                                dir_fd=dfd)
                            except OSError as e:
                                raise MountError(e.errno or errno.EACCES, f"{what}: "
                                                 f"{os.fsdecode(sub)} there cannot be searched "
                                                 f"({os.strerror(e.errno or errno.EACCES)}), so "
                                                 "warden cannot rule out a set-id program in "
                                                 f"it; make it searchable, or bind it with "
                                                 f"{plain}") from None
                            stack.append((child, sub + b"/"))
                        elif _privileged(st, dfd, entry.name):
                            parts = sub.split(b"/")
                            found.update(b"/".join(parts[:i]) for i in range(1, len(parts) + 1))
                            if len(found) > MAX_PINS:
                                raise MountError(errno.EMFILE, f"{what}: more than {MAX_PINS} "
                                                 "set-id programs (or directories holding "
                                                 "them) to keep in place; bind it with "
                                                 f"{plain}, or remove their set-id bits")
            finally:
                os.close(dfd)
    except BaseException:
        for dfd, _rel in stack:
            os.close(dfd)
        raise
    return tuple(sorted(found, key=lambda p: (p.count(b"/"), p)))


def _resolve_source(op: MountOp, ids: tuple[int, int] | None = None) -> MountOp:
    """Parent, outside the sandbox, privileged: resolve a bind source once and take
    everything from that one fd: its kind, the link it is, or a clone of its tree.

    A source that is itself a symbolic link becomes that link in the sandbox (not
    followed); a link anywhere before it is refused (hostpath). Because open_tree
    acts on the fd, a rename of the path after this point changes nothing bound."""
    src = op.source.decode(errors="surrogateescape")
    fd, st = hostpath.open_bind_source(src, f"bind {src} on {op.dest.decode()}")
    try:
        if stat.S_ISLNK(st.st_mode):
            return MountOp("symlink", os.fsencode(os.readlink("", dir_fd=fd)), op.dest)
        op = op._replace(is_dir=stat.S_ISDIR(st.st_mode), dev=st.st_dev, ino=st.st_ino)
        what = f"bind {src} on {op.dest.decode()}"
        try:
            tree = _sys.open_tree_clone_fd(fd)
        except OSError as e:
            # EPERM: an ordinary user may not clone a tree of the host's mount
            # namespace; the child binds it inside its own (checking identity).
            if e.errno not in (errno.EPERM, errno.ENOSYS, errno.EINVAL):
                raise MountError(e.errno or errno.EIO,
                                 f"bind source {src}: {e.strerror}") from None
            tree = -1
        if op.owned and ids is not None and (st.st_uid, st.st_gid) != ids:
            if tree < 0 or os.geteuid() != 0:
                if tree >= 0:
                    os.close(tree)
                raise MountError(errno.EPERM, f"{what}: an idmapped mount needs root, and "
                                 f"{src} is owned by {st.st_uid}:{st.st_gid}, not by the "
                                 f"sandbox's outer ids {ids[0]}:{ids[1]}; bind it with "
                                 f"{_plain(op)} instead, or make it yours")
            try:
                _idmap(tree, st, ids, what, _plain(op))
            except BaseException:
                os.close(tree)
                raise
        if op.owned and op.writable and op.is_dir:
            try:
                op = op._replace(pins=_pins(fd, what, _plain(op)))
            except BaseException:
                if tree >= 0:
                    os.close(tree)
                raise
        return op._replace(tree_fd=tree)
    finally:
        os.close(fd)


def parent_detach(ops: tuple[MountOp, ...],
                  ids: tuple[int, int] | None = None) -> tuple[MountOp, ...]:
    """Resolve each bind's source here, in the parent, and clone its tree with the
    parent's rights.

    The child then attaches the clone instead of looking the path up as its
    own unprivileged id, so a root supervisor can bind a directory that lies
    under a path only root may traverse (a checkout in /root, a 0700 temporary
    directory), exactly as `--file` opens files with the parent's rights. The
    bound directory's own permissions still apply to the child. Where the
    kernel or the caller's privilege does not allow open_tree (an ordinary
    user, Linux before 5.2), the op keeps tree_fd -1 and the child binds the
    path in its own namespace, refusing it unless it is the very file resolved
    here. Close the returned fds with `parent_close` once the child has them.

    `ids`: the sandbox's outer (uid, gid); an owned bind whose source another id
    owns becomes an idmapped mount mapping that owner to them (root only).
    """
    out: list[MountOp] = []
    try:
        for op in ops:
            out.append(_resolve_source(op, ids) if op.kind == "bind" else op)
    except BaseException:
        parent_close(tuple(out))
        raise
    return tuple(out)


def tree_fds(ops: tuple[MountOp, ...]) -> tuple[int, ...]:
    return tuple(op.tree_fd for op in ops if op.tree_fd >= 0)


def parent_close(ops: tuple[MountOp, ...]) -> tuple[MountOp, ...]:
    """Close the detached trees' fds; returns the ops without them (closing twice is safe)."""
    for fd in tree_fds(ops):
        with contextlib.suppress(OSError):
            os.close(fd)
    return tuple(op._replace(tree_fd=-1) for op in ops)


def _mkdirs(path: bytes) -> None:
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, 0o755, exist_ok=True)


def _touch(path: bytes) -> None:
    _mkdirs(os.path.dirname(path))
    if not os.path.lexists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


_LOCKABLE = ((os.ST_RDONLY, _sys.MS_RDONLY), (os.ST_NOSUID, _sys.MS_NOSUID),
             (os.ST_NODEV, _sys.MS_NODEV), (os.ST_NOEXEC, _sys.MS_NOEXEC),
             (os.ST_NOATIME, _sys.MS_NOATIME), (os.ST_NODIRATIME, _sys.MS_NODIRATIME),
             (os.ST_RELATIME, _sys.MS_RELATIME))


def _locked(path: bytes) -> int:
    """The MS_* flags a mount has now (those a remount in a userns must keep)."""
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in _LOCKABLE if f & st)


def _lock_down(path: bytes, readonly: bool, exec_ok: bool = True) -> None:
    """Make a mount (and its submounts) nosuid+nodev, and read-only when asked."""
    attrs = _sys.MOUNT_ATTR_NOSUID | _sys.MOUNT_ATTR_NODEV
    if readonly:
        attrs |= _sys.MOUNT_ATTR_RDONLY
    if not exec_ok:
        attrs |= _sys.MOUNT_ATTR_NOEXEC
    try:
        _sys.mount_setattr(path, attrs, recursive=True)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
        # Before Linux 5.12: remount the top mount only (its submounts keep
        # their flags), keeping the flags the kernel locked on it (remounting
        # without them is refused in a user namespace).
        flags = _sys.MS_BIND | _sys.MS_REMOUNT | _sys.MS_NOSUID | _sys.MS_NODEV | _locked(path)
        if readonly:
            flags |= _sys.MS_RDONLY
        if not exec_ok:
            flags |= _sys.MS_NOEXEC
        _sys.mount(None, path, None, flags)


def _readonly(path: bytes) -> None:
    """Make one mount read-only (not its submounts), keeping its other flags."""
    try:
        _sys.mount_setattr(path, _sys.MOUNT_ATTR_RDONLY, recursive=False)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
        _sys.mount(None, path, None, _sys.MS_BIND | _sys.MS_REMOUNT | _sys.MS_RDONLY
                   | _locked(path))


def _child_tree(op: MountOp, what: str) -> int:
    """Child, in its own user and mount namespaces: a clone of the source the parent resolved.

    The path is looked up again here (the parent's fd belongs to the host's
    mount namespace, which this one may not clone from), with no link
    followed, and cloned only if it is the same file (st_dev, st_ino) the
    parent resolved, so a rename or a planted link in between gets a refusal,
    never another tree. The clone is made from that fd, not the path.
    Returns -1 before Linux 5.2 (no open_tree): the caller binds the path."""
    path = b"/oldroot" + op.source
    try:
        fd, st = hostpath.open_path(os.fsdecode(path), what)
    except OSError as e:
        # A link, or nothing, where warden found the source: it was replaced.
        if e.errno not in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR):
            raise MountError(e.errno or errno.EIO,
                             f"{what}: {os.strerror(e.errno or errno.EIO)}") from None
        fd, st = -1, None
    if st is None or (st.st_dev, st.st_ino) != (op.dev, op.ino):
        if fd >= 0:
            os.close(fd)
        raise MountError(errno.ESTALE, f"{what}: refused, {op.source.decode(errors='replace')} "
                         "is no longer the file warden resolved (renamed or replaced while the "
                         "sandbox was set up)")
    try:
        return _sys.open_tree_clone_fd(fd)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
        return -1
    finally:
        os.close(fd)


class _Refused(OSError):
    """A mount point refused; str() is the clause after the step's name."""

    def __str__(self) -> str:
        return str(self.strerror)


def _at(dir_fd: int, name: bytes) -> int:
    """O_PATH fd of `name` in `dir_fd`, never through a link (a mount on it is entered)."""
    try:
        return _sys.openat2(dir_fd, name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, 0,
                            _sys.RESOLVE_NO_SYMLINKS | _sys.RESOLVE_NO_MAGICLINKS)
    except OSError as e:
        if e.errno == errno.ENOSYS:  # before Linux 5.6: one component, O_NOFOLLOW is enough
            return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        raise


def _parent_of(root_fd: int, dest: bytes) -> tuple[int, bytes]:
    """Make the directories above `dest` in the new root; returns (O_PATH fd of dest's
    directory, dest's last name).

    Child, before the old root is gone, with the child's own rights. Each
    component is entered through an fd and must not be a link: a link left in
    a writable bind by an earlier sandbox would otherwise take this mkdir, and
    the mount, to a host directory outside every bind."""
    parts = [p for p in dest.split(b"/") if p]
    cur = os.open(b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
    try:
        for i, part in enumerate(parts[:-1]):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=cur)
            nxt = _checked(cur, part, b"/" + b"/".join(parts[:i + 1]), True)
            os.close(cur)
            cur = nxt
    except BaseException:
        os.close(cur)
        raise
    return cur, parts[-1]


def _checked(dir_fd: int, name: bytes, shown: bytes, is_dir: bool) -> int:
    """_at, refusing a link and a kind other than the one wanted (directory or not)."""
    fd = _at(dir_fd, name)
    mode = os.fstat(fd).st_mode
    if stat.S_ISLNK(mode):  # O_PATH|O_NOFOLLOW returns a last-component link itself
        os.close(fd)
        raise _Refused(errno.ELOOP, f"refused, {shown.decode(errors='replace')} in the "
                       "sandbox is a symbolic link, which warden does not follow when it "
                       "makes mount points")
    if stat.S_ISDIR(mode) != is_dir:
        os.close(fd)
        raise _Refused(errno.ENOTDIR if is_dir else errno.EISDIR,
                       f"refused, {shown.decode(errors='replace')} in the sandbox is "
                       f"{'not ' if is_dir else ''}a directory")
    return fd


def _mount_point(root_fd: int, dest: bytes, is_dir: bool) -> tuple[int, bytes, int]:
    """(directory fd, name, O_PATH fd of the mount point) for `dest`, made if missing."""
    parent, name = _parent_of(root_fd, dest)
    try:
        if is_dir:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent)
        else:
            with contextlib.suppress(FileExistsError):
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                                 0o644, dir_fd=parent))
        return parent, name, _checked(parent, name, dest, is_dir)
    except BaseException:
        os.close(parent)
        raise


def _bind_at(root_fd: int, op: MountOp, what: str) -> None:
    """Attach a bind's tree on its mount point (found through fds) and lock it down."""
    parent, name, target = _mount_point(root_fd, op.dest, op.is_dir)
    try:
        tree = op.tree_fd if op.tree_fd >= 0 else _child_tree(op, what)
        try:
            if tree < 0:  # before Linux 5.2: by path, right after the identity check
                _sys.mount(b"/oldroot" + op.source, b"/newroot" + op.dest, None,
                           _sys.MS_BIND | _sys.MS_REC)
            else:
                _sys.move_mount_to_fd(tree, target)
        finally:
            if tree >= 0:
                os.close(tree)
        # Looked up again by name from the directory: that lands on the mount
        # just attached (the target fd still names the directory beneath it).
        top = _at(parent, name)
        try:
            for rel in op.pins:
                _pin(top, rel, op.dest)
            _lock_down_fd(top, b"/newroot" + op.dest, not op.writable)
        finally:
            os.close(top)
    finally:
        os.close(target)
        os.close(parent)


def _pin(top: int, rel: bytes, dest: bytes) -> None:
    """Child, during setup: bind `rel` (in the bind mounted at `top`) onto itself, so the
    workload cannot rename, replace or unlink it (EBUSY). Shallowest first: a directory
    pinned before what is in it, each looked up through the mounts made so far, no link
    followed (one planted since the parent looked is refused)."""
    shown = dest + b"/" + rel
    try:
        fd = _sys.openat2(top, rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, 0,
                          _sys.RESOLVE_NO_SYMLINKS | _sys.RESOLVE_NO_MAGICLINKS
                          | _sys.RESOLVE_BENEATH)
    except OSError as e:
        raise _Refused(e.errno or errno.EIO, f"refused, {shown.decode(errors='replace')}, a "
                       "set-id program (or a directory holding one) warden keeps in place, "
                       f"cannot be reached without a link ({os.strerror(e.errno or 0)})") \
            from None
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise _Refused(errno.ELOOP, f"refused, {shown.decode(errors='replace')} is now a "
                           "symbolic link")
        tree = _sys.open_tree_clone_fd(fd)
        try:
            _sys.move_mount_to_fd(tree, fd)
        finally:
            os.close(tree)
    finally:
        os.close(fd)


def _lock_down_fd(fd: int, path: bytes, readonly: bool) -> None:
    attrs = _sys.MOUNT_ATTR_NOSUID | _sys.MOUNT_ATTR_NODEV
    if readonly:
        attrs |= _sys.MOUNT_ATTR_RDONLY
    try:
        _sys.mount_setattr_fd(fd, attrs, recursive=True)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
        _lock_down(path, readonly)  # before Linux 5.12: remount by path


def _tmpfs_at(root_fd: int, dest: bytes, size: int) -> None:
    parent, _name, target = _mount_point(root_fd, dest, True)
    try:
        # mount(2) takes a path only: "." after fchdir is the mount point itself.
        os.fchdir(target)
        _sys.mount(b"tmpfs", b".", b"tmpfs", _sys.MS_NOSUID | _sys.MS_NODEV,
                   b"mode=0755,size=%d" % size)
    finally:
        os.chdir(b"/")
        os.close(target)
        os.close(parent)


def _symlink_at(root_fd: int, dest: bytes, points_to: bytes) -> None:
    parent, name = _parent_of(root_fd, dest)
    try:
        os.symlink(points_to, name, dir_fd=parent)
    finally:
        os.close(parent)


_STAGE = b"/data"  # in the scratch root: the data files, before each is bound at its dest


def _stage_data(ops: tuple[MountOp, ...]) -> None:
    """Write each data op's contents to a file (mode 0444) on a tmpfs of its own in the
    scratch root; the file is then bound at its dest and gone with the scratch root."""
    data = [op for op in ops if op.kind == "data"]
    if not data:
        return
    os.mkdir(_STAGE, 0o700)
    size = sum(len(op.source) + 4096 for op in data) + 4096
    _step("tmpfs for data files", _sys.mount, b"tmpfs", _STAGE, b"tmpfs",
          _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC, b"mode=0700,size=%d" % size)
    for i, op in enumerate(data):
        fd = os.open(_STAGE + b"/%d" % i, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                     0o444)
        try:
            view = memoryview(op.source)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def _data_at(root_fd: int, dest: bytes, index: int) -> None:
    """Bind staged data file `index` read-only on a file mount point made at `dest`."""
    parent, name, target = _mount_point(root_fd, dest, False)
    try:
        src = os.open(_STAGE + b"/%d" % index, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            tree = _sys.open_tree_clone_fd(src)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            tree = -1
        finally:
            os.close(src)
        if tree < 0:  # before Linux 5.2: by path
            _sys.mount(_STAGE + b"/%d" % index, b"/newroot" + dest, None, _sys.MS_BIND)
        else:
            try:
                _sys.move_mount_to_fd(tree, target)
            finally:
                os.close(tree)
        top = _at(parent, name)
        try:
            _lock_down_fd(top, b"/newroot" + dest, True)
        finally:
            os.close(top)
    finally:
        os.close(target)
        os.close(parent)


def _dir_at(root_fd: int, dest: bytes) -> None:
    parent, _name, target = _mount_point(root_fd, dest, True)
    os.close(target)
    os.close(parent)


def child_root(ops: tuple[MountOp, ...], tmp_size: int, chdir: bytes,
               shm_size: int = 64 << 20) -> None:
    """Build the new root and pivot into it. Raises MountError naming the path."""
    try:
        _setup_root(ops, tmp_size, chdir, shm_size)
    except MountError:
        raise
    except OSError as e:
        raise MountError(e.errno or errno.EIO, str(e)) from None


def _step(what: str, fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except MountError:
        raise
    except _Refused as e:
        raise MountError(e.errno or errno.EIO, f"{what}: {e}") from None
    except OSError as e:
        raise MountError(e.errno or errno.EIO, f"{what}: {os.strerror(e.errno or errno.EIO)}") \
            from None


def _setup_root(ops: tuple[MountOp, ...], tmp_size: int, chdir: bytes, shm_size: int) -> None:
    m = _sys.mount
    _step("make / private", m, None, b"/", None, _sys.MS_REC | _sys.MS_PRIVATE)
    # Scratch root on /tmp (private to this namespace); the host stays at /oldroot.
    _step("tmpfs scratch", m, b"tmpfs", b"/tmp", b"tmpfs", _sys.MS_NOSUID | _sys.MS_NODEV,
          b"mode=0700,size=1m")
    os.mkdir(b"/tmp/oldroot")
    os.mkdir(b"/tmp/newroot")
    _step("pivot_root to scratch", _sys.pivot_root, b"/tmp", b"/tmp/oldroot")
    os.chdir(b"/")
    _step("tmpfs /", m, b"tmpfs", b"/newroot", b"tmpfs", _sys.MS_NOSUID | _sys.MS_NODEV,
          b"mode=0755,size=1m")
    new = b"/newroot"

    # /tmp first: size-capped, world-writable with the sticky bit, and under
    # the binds, so a bind below /tmp (a checkout in /tmp/...) stays visible.
    _mkdirs(new + b"/tmp")
    _step("tmpfs /tmp", m, b"tmpfs", new + b"/tmp", b"tmpfs", _sys.MS_NOSUID | _sys.MS_NODEV,
          b"mode=1777,size=%d" % tmp_size)

    _stage_data(ops)
    # Every mount point below is reached through fds from here, never a link.
    root_fd = os.open(new, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    data = 0
    try:
        for op in ops:
            if op.kind == "symlink":
                _step(f"symlink {op.dest.decode()}", _symlink_at, root_fd, op.dest, op.source)
            elif op.kind == "tmpfs":
                _step(f"tmpfs {op.dest.decode()}", _tmpfs_at, root_fd, op.dest, op.size)
            elif op.kind == "data":
                _step(f"data file {op.dest.decode()}", _data_at, root_fd, op.dest, data)
                data += 1
            elif op.kind == "dir":
                _step(f"dir {op.dest.decode()}", _dir_at, root_fd, op.dest)
            else:
                what = f"bind {op.source.decode()} on {op.dest.decode()}"
                _step(what, _bind_at, root_fd, op, what)
        if chdir != b"/":
            _step(f"chdir {chdir.decode()}", _dir_at, root_fd, chdir)
    finally:
        os.close(root_fd)

    # /proc: a fresh procfs, which shows only the new PID namespace.
    _mkdirs(new + b"/proc")
    _step("proc on /proc", m, b"proc", new + b"/proc", b"proc",
          _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC)

    # /dev: a small tmpfs with five device binds and the usual links, then read-only.
    dev = new + b"/dev"
    _mkdirs(dev)
    _step("tmpfs /dev", m, b"tmpfs", dev, b"tmpfs", _sys.MS_NOSUID | _sys.MS_NOEXEC,
          b"mode=0755,size=64k")
    for name in DEV_NODES:
        node = dev + b"/" + name.encode()
        _touch(node)
        _step(f"bind /dev/{name}", m, b"/oldroot/dev/" + name.encode(), node, None, _sys.MS_BIND)
    for link, points_to in DEV_LINKS:
        os.symlink(points_to.encode(), dev + b"/" + link.encode())
    # /dev/shm: POSIX shared memory and semaphores (multiprocessing's locks), a
    # size-capped tmpfs of this sandbox's own, like /tmp; it stays writable
    # when /dev (the mount beneath it, alone) is made read-only.
    os.mkdir(dev + b"/shm", 0o755)
    _step("tmpfs /dev/shm", m, b"tmpfs", dev + b"/shm", b"tmpfs",
          _sys.MS_NOSUID | _sys.MS_NODEV, b"mode=1777,size=%d" % shm_size)
    # /dev/pts: a devpts instance of this sandbox's own (each devpts mount is a new
    # instance since Linux 4.7; "newinstance" says so to older ones), which holds only
    # the terminals the sandbox opens: none of the host's is even listed. ptmxmode:
    # anyone in the sandbox may open a pair. No gid= option: the tty group (5) is
    # not mapped in the sandbox's user namespace, and a gid it does not map makes
    # the mount fail; a terminal belongs to the group of the process that opens it.
    # max: a sandbox cannot take the pseudo-terminals every other one shares.
    os.mkdir(dev + b"/pts", 0o755)
    _step("devpts /dev/pts", m, b"devpts", dev + b"/pts", b"devpts",
          _sys.MS_NOSUID | _sys.MS_NOEXEC, b"newinstance,ptmxmode=0666,mode=620,max=%d" % PTY_MAX)
    os.symlink(b"pts/ptmx", dev + b"/ptmx")
    _step("read-only /dev", _readonly, dev)

    # Into the new root; stack the old one on it and detach it.
    os.chdir(new)
    _step("pivot_root to new root", _sys.pivot_root, b".", b".")
    _step("detach old root", _sys.umount2, b".", _sys.MNT_DETACH)
    os.chdir(b"/")
    _step("read-only /", _readonly, b"/")
    _step(f"chdir {chdir.decode()}", os.chdir, chdir)

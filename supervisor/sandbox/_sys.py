"""Raw Linux calls that Python 3.11's `os` lacks, through ctypes.

Only what the sandbox needs: clone with namespace flags, unshare, mount,
pivot_root, mount_setattr, close_range, seccomp, landlock,
capset and prctl. Each wrapper raises OSError with the kernel's errno, so the
child-side steps can report (step, errno) without knowing ctypes.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
# clone() must run with the GIL held: the child resumes inside this call and
# must find the interpreter exactly as the parent left it.
_libc_gil = ctypes.PyDLL(None, use_errno=True)

_MACHINE = os.uname().machine

# Per-architecture numbers for calls that glibc does not wrap. Numbers from
# 424 up (pidfd_*, close_range, mount_setattr, landlock_*) are shared by all
# architectures.
_NR: dict[str, dict[str, int]] = {
    "x86_64": {"clone": 56, "pivot_root": 155, "seccomp": 317, "execve": 59},
    "aarch64": {"clone": 220, "pivot_root": 41, "seccomp": 277, "execve": 221},
}
# AUDIT_ARCH_* of the native architecture, as seen in seccomp_data.arch.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(_MACHINE, 0)

if _MACHINE not in _NR:  # pragma: no cover - only x86_64/aarch64 are supported
    raise ImportError(f"warden.supervisor.sandbox supports x86_64 and aarch64, not {_MACHINE}")

NR = dict(_NR[_MACHINE])
NR.update(
    clone3=435, open_tree=428, move_mount=429, close_range=436, mount_setattr=442,
    landlock_create_ruleset=444, landlock_add_rule=445, landlock_restrict_self=446,
)

# clone/unshare flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_PARENT = 0x00008000
CLONE_FILES = 0x00000400
CLONE_VFORK = 0x00004000
CLONE_INTO_CGROUP = 0x200000000  # clone3 only (Linux 5.7+), cgroup v2
CSIGNAL = 0xFF

# mount flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
AT_RECURSIVE = 0x8000
AT_FDCWD = -100

# prctl options
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def syscall(name: str, *args: object) -> int:
    """Call syscall `name` with integer/pointer args; raise OSError on -1."""
    ret = int(_libc.syscall(ctypes.c_long(NR[name]), *args))
    if ret == -1:
        raise _fail(name)
    return ret


def clone(flags: int) -> int:
    """fork-like clone(2) with extra flags; returns 0 in the child, its pid in the parent."""
    ret = int(_libc_gil.syscall(ctypes.c_long(NR["clone"]), ctypes.c_ulong(flags), None, None,
                                None, None))
    if ret == -1:
        raise _fail("clone")
    return ret


class _CloneArgs(ctypes.Structure):
    # struct clone_args up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes)
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def clone3_into_cgroup(flags: int, cgroup_fd: int) -> int:
    """fork-like clone3(2) with CLONE_INTO_CGROUP: the child is born in the cgroup v2
    directory `cgroup_fd` refers to, so nothing has to move it there afterwards.

    `flags` as for clone(): its low byte is the exit signal (clone3 takes it apart).
    Raises OSError: ENOSYS before Linux 5.3, E2BIG before 5.7 (no cgroup field), and
    the kernel's check of the caller's right to write that cgroup's procs file."""
    args = _CloneArgs(flags=(flags & ~CSIGNAL) | CLONE_INTO_CGROUP,
                      exit_signal=flags & CSIGNAL, cgroup=cgroup_fd)
    ret = int(_libc_gil.syscall(ctypes.c_long(NR["clone3"]), ctypes.byref(args),
                                ctypes.c_size_t(ctypes.sizeof(args))))
    if ret == -1:
        raise _fail("clone3")
    return ret


def setfsuid(uid: int) -> int:
    """setfsuid(2); returns the previous filesystem uid (the call reports no errors:
    a uid it refuses leaves the old one, which the caller checks with a second call)."""
    return int(_libc.setfsuid(ctypes.c_uint(uid)))


def unshare(flags: int) -> None:
    if _libc.unshare(ctypes.c_int(flags)) == -1:
        raise _fail("unshare")


def setns(fd: int, nstype: int) -> None:
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) == -1:
        raise _fail("setns")


def mount(source: bytes | None, target: bytes, fstype: bytes | None, flags: int,
          data: bytes | None = None) -> None:
    if _libc.mount(source, target, fstype, ctypes.c_ulong(flags), data) == -1:
        raise _fail(f"mount {target.decode(errors='replace')}")


def umount2(target: bytes, flags: int) -> None:
    if _libc.umount2(target, ctypes.c_int(flags)) == -1:
        raise _fail("umount2")


def pivot_root(new_root: bytes, put_old: bytes) -> None:
    syscall("pivot_root", new_root, put_old)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(path: bytes, attr_set: int, recursive: bool) -> None:
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    syscall("mount_setattr", ctypes.c_int(AT_FDCWD), path, ctypes.c_uint(flags),
            ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))


OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4


def open_tree_clone(path: bytes) -> int:
    """A detached, recursive copy of the mount tree at `path` (Linux 5.2+), as an fd.

    The path is resolved with the caller's rights, here and now; the copy can
    then be attached in another mount namespace with `move_mount_fd`."""
    return syscall("open_tree", ctypes.c_int(AT_FDCWD), path,
                   ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE))


def move_mount_fd(tree_fd: int, target: bytes) -> None:
    """Attach a detached mount tree (from `open_tree_clone`) at `target`."""
    syscall("move_mount", ctypes.c_int(tree_fd), b"", ctypes.c_int(AT_FDCWD), target,
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))


def close_range(first: int, last: int) -> None:
    """Close fds first..last; falls back to a loop on kernels before 5.9."""
    if first > last:
        return
    try:
        syscall("close_range", ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(0))
    except OSError:
        os.closerange(first, min(last, 65535) + 1)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    ret = int(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                          ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)))
    if ret == -1:
        raise _fail(f"prctl({option})")
    return ret


def sethostname(name: bytes) -> None:
    if _libc.sethostname(name, ctypes.c_size_t(len(name))) == -1:
        raise _fail("sethostname")


def setgroups_empty() -> None:
    if _libc.setgroups(ctypes.c_size_t(0), None) == -1:
        raise _fail("setgroups")


class PreparedExec:
    """execve(2) with its C arrays built in advance, so that after seccomp is
    loaded the child makes no call but execve itself."""

    def __init__(self, path: bytes, argv: list[bytes], envp: list[bytes]) -> None:
        self.path = ctypes.c_char_p(path)
        self.argv = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
        self.envp = (ctypes.c_char_p * (len(envp) + 1))(*envp, None)
        self._execve = _libc.execve

    def __call__(self) -> int:
        """Returns only on failure, with the errno."""
        self._execve(self.path, self.argv, self.envp)
        return ctypes.get_errno()


libc = _libc


# openat2(2) (Linux 5.6+): one path resolution with the kernel's own rules
# about links, so no check of a path can be raced by a rename between steps.
NR["openat2"] = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
RESOLVE_NO_SYMLINKS = 0x04
AT_EMPTY_PATH = 0x1000


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    """openat2(2): open `path` with `flags` under the RESOLVE_* rules in `resolve`."""
    how = _OpenHow(flags, mode if flags & (os.O_CREAT | getattr(os, "O_TMPFILE", 0)) else 0,
                   resolve)
    return syscall("openat2", ctypes.c_int(dirfd), path, ctypes.byref(how),
                   ctypes.c_size_t(ctypes.sizeof(how)))


def open_tree_clone_fd(fd: int) -> int:
    """A detached, recursive copy of the mount tree at the object `fd` refers to.

    Unlike `open_tree_clone(path)`, nothing is looked up: the tree is the one
    `fd` (an O_PATH descriptor) was opened on, whatever happened to the path since."""
    return syscall("open_tree", ctypes.c_int(fd), b"",
                   ctypes.c_uint(AT_EMPTY_PATH | OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC
                                 | AT_RECURSIVE))


MOVE_MOUNT_T_EMPTY_PATH = 0x40


def move_mount_to_fd(tree_fd: int, target_fd: int) -> None:
    """Attach a detached mount tree on the directory or file `target_fd` (O_PATH) is."""
    syscall("move_mount", ctypes.c_int(tree_fd), b"", ctypes.c_int(target_fd), b"",
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH))


def mount_setattr_fd(fd: int, attr_set: int, recursive: bool) -> None:
    """mount_setattr(2) on the mount `fd` is the root of (opened after the mount)."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    syscall("mount_setattr", ctypes.c_int(fd), b"", ctypes.c_uint(flags),
            ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))

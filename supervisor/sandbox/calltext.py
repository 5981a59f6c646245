"""A refused call as a person reads it: `socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0x0)`,
`openat(AT_FDCWD, "/etc/shadow", O_RDONLY|O_CLOEXEC)`.

Every report of a seccomp kill uses it (`Status.describe()`, so the supervisor's
WorkerDied and log lines too, and `warden run`'s hints), so a kill reads the same
wherever it is met. Imports nothing of the sandbox at run time: the status and
notification modules import it.
"""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from warden.supervisor.sandbox.status import Complaint, Violation

# Which argument of a path-taking call holds the path (x86_64 names).
PATH_ARG = {
    "open": 0, "creat": 0, "openat": 1, "openat2": 1, "execve": 0, "execveat": 1,
    "stat": 0, "lstat": 0, "newfstatat": 1, "statx": 1, "access": 0, "faccessat": 1,
    "faccessat2": 1, "readlink": 0, "readlinkat": 1, "unlink": 0, "unlinkat": 1,
    "mkdir": 0, "mkdirat": 1, "rmdir": 0, "chdir": 0, "chmod": 0, "fchmodat": 1,
    "chown": 0, "lchown": 0, "fchownat": 1, "truncate": 0, "mknod": 0, "mknodat": 1,
    "rename": 0, "renameat": 1, "renameat2": 1, "link": 0, "linkat": 1, "symlink": 1,
    "symlinkat": 2, "utimensat": 1, "chroot": 0, "mount": 1, "umount2": 0,
    "pivot_root": 0, "swapon": 0, "acct": 0,
}


# Which argument of a call holds which family of constants (by name prefix):
# "=" a single value of the family, "|" flags of it (several may be or-ed).
_ARGS: dict[str, tuple[tuple[str, str] | None, ...]] = {
    "socket": (("AF_", "="), ("SOCK_", "|"), None),
    "socketpair": (("AF_", "="), ("SOCK_", "|"), None),
    "clone": (("CLONE_", "|"),),
    "unshare": (("CLONE_", "|"),),
    "setns": (None, ("CLONE_", "|")),
    "open": (None, ("O_", "|")),
    "openat": (None, None, ("O_", "|")),
    "fcntl": (None, ("F_", "=")),
    "prctl": (("PR_", "="),),
    "ioctl": (None, ("", "=")),  # request numbers of any known name (TIOC*, FIO*)
    "mmap": (None, None, ("PROT_", "|"), ("MAP_", "|")),
    "mprotect": (None, None, ("PROT_", "|")),
}
_SKIP = ("O_ACCMODE", "CSIGNAL", "AF_LOCAL")  # masks and aliases, never a reading


def _names(prefix: str) -> dict[str, int]:
    from warden.profiles.constants import CONSTANTS  # only when a kill is worded

    return {k: v for k, v in CONSTANTS.items() if k.startswith(prefix) and k not in _SKIP}


def _single(value: int, prefix: str) -> str:
    for name, v in _names(prefix).items():
        if v == value and (prefix or not name.startswith(("AF_", "SOCK_", "CLONE_", "O_"))):
            return name
    return hex(value)


def _flags(value: int, prefix: str) -> str:
    if value == 0:
        return "0"
    names = _names(prefix)
    parts: list[str] = []
    rest = value
    if prefix == "SOCK_":  # the type is a value in the low bits; the rest are flags
        kind = value & 0xF
        parts.append(next((n for n, v in names.items() if v == kind), hex(kind)))
        rest = value & ~0xF
    elif prefix == "O_":  # access mode 0 is O_RDONLY
        mode = value & 0o3
        parts.append({0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}.get(mode, hex(mode)))
        rest = value & ~0o3
    for name, v in sorted(names.items(), key=lambda kv: -kv[1]):
        if v and v & (v - 1) == 0 and rest & v:  # one bit each
            parts.append(name)
            rest &= ~v
    if rest:
        parts.append(hex(rest))
    return "|".join(parts)


_AT_FDCWD = 0xFFFFFF9C  # -100 as the 32 bits a dirfd argument holds
_DIRFD_FIRST = ("openat", "openat2", "newfstatat", "unlinkat", "mkdirat", "faccessat",
                "faccessat2", "execveat", "renameat2", "linkat", "symlinkat", "readlinkat")


def _clone_flags(value: int) -> str:
    """clone's low byte is the exit signal, the rest CLONE_* flags."""
    sig = value & 0xFF
    text = _flags(value & ~0xFF, "CLONE_") if value & ~0xFF else ""
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = hex(sig)
        text = f"{text}|{name}" if text else name
    return text or "0"


def call_text(v: Violation | Complaint) -> str:
    """`name(arg, ...)` with the arguments warden knows the meaning of decoded."""
    kinds = _ARGS.get(v.syscall, ())
    shown = []
    for i, a in enumerate(v.args):
        kind = kinds[i] if i < len(kinds) else None
        path = getattr(v, "path", None)
        if path is not None and PATH_ARG.get(v.syscall) == i:
            shown.append(json.dumps(path))
        elif i == 0 and v.syscall in _DIRFD_FIRST and a & 0xFFFFFFFF == _AT_FDCWD:
            shown.append("AT_FDCWD")
        elif v.syscall in ("clone", "unshare") and i == 0:
            shown.append(_clone_flags(a & 0xFFFFFFFF))
        elif kind is None:
            shown.append(hex(a))
        elif kind[1] == "|":
            shown.append(_flags(a & 0xFFFFFFFF, kind[0]))
        else:
            shown.append(_single(a & 0xFFFFFFFF, kind[0]))
    # Calls take at most six; trailing registers the call does not read are noise.
    used = max(len(kinds), 1) if kinds else len(shown)
    return f"{v.syscall}({', '.join(shown[:used])})"

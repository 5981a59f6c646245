"""Symbolic constants a profile may use in argument conditions and errno actions.

Values are the x86_64 Linux ABI ones (the native arch warden compiles for);
tests check them against Python's own socket/os/termios/mmap modules where
those define them. A value is written as NAME, a number (decimal, 0x, 0o,
0b) or several of them joined with "|".
"""

from __future__ import annotations

import errno as _errno

from warden.profiles.errors import ProfileError

CONSTANTS: dict[str, int] = {
    # socket(2) domains
    "AF_UNSPEC": 0,
    "AF_UNIX": 1,
    "AF_LOCAL": 1,
    "AF_INET": 2,
    "AF_AX25": 3,
    "AF_IPX": 4,
    "AF_APPLETALK": 5,
    "AF_X25": 9,
    "AF_INET6": 10,
    "AF_KEY": 15,
    "AF_NETLINK": 16,
    "AF_PACKET": 17,
    "AF_RDS": 21,
    "AF_CAN": 29,
    "AF_TIPC": 30,
    "AF_BLUETOOTH": 31,
    "AF_ALG": 38,
    "AF_VSOCK": 40,
    "AF_XDP": 44,
    # socket(2) types and flags
    "SOCK_STREAM": 1,
    "SOCK_DGRAM": 2,
    "SOCK_RAW": 3,
    "SOCK_RDM": 4,
    "SOCK_SEQPACKET": 5,
    "SOCK_NONBLOCK": 0o4000,
    "SOCK_CLOEXEC": 0o2000000,
    # clone(2) flags
    "CSIGNAL": 0x000000FF,
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_VM": 0x00000100,
    "CLONE_FS": 0x00000200,
    "CLONE_FILES": 0x00000400,
    "CLONE_SIGHAND": 0x00000800,
    "CLONE_PIDFD": 0x00001000,
    "CLONE_PTRACE": 0x00002000,
    "CLONE_VFORK": 0x00004000,
    "CLONE_PARENT": 0x00008000,
    "CLONE_THREAD": 0x00010000,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_SYSVSEM": 0x00040000,
    "CLONE_SETTLS": 0x00080000,
    "CLONE_PARENT_SETTID": 0x00100000,
    "CLONE_CHILD_CLEARTID": 0x00200000,
    "CLONE_DETACHED": 0x00400000,
    "CLONE_UNTRACED": 0x00800000,
    "CLONE_CHILD_SETTID": 0x01000000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_IO": 0x80000000,
    # tty ioctl(2) requests
    "TCGETS": 0x5401,
    "TCSETS": 0x5402,
    "TCSETSW": 0x5403,
    "TCSETSF": 0x5404,
    "TIOCEXCL": 0x540C,
    "TIOCNXCL": 0x540D,
    "TIOCSCTTY": 0x540E,
    "TIOCGPGRP": 0x540F,
    "TIOCSPGRP": 0x5410,
    "TIOCOUTQ": 0x5411,
    "TIOCSTI": 0x5412,
    "TIOCGWINSZ": 0x5413,
    "TIOCSWINSZ": 0x5414,
    "FIONREAD": 0x541B,
    "TIOCLINUX": 0x541C,
    "TIOCCONS": 0x541D,
    "FIONBIO": 0x5421,
    "TIOCNOTTY": 0x5422,
    "TIOCSETD": 0x5423,
    "FIONCLEX": 0x5450,
    "FIOCLEX": 0x5451,
    "FIOASYNC": 0x5452,
    # open(2) flags
    "O_RDONLY": 0,
    "O_WRONLY": 1,
    "O_RDWR": 2,
    "O_ACCMODE": 3,
    "O_CREAT": 0o100,
    "O_EXCL": 0o200,
    "O_NOCTTY": 0o400,
    "O_TRUNC": 0o1000,
    "O_APPEND": 0o2000,
    "O_NONBLOCK": 0o4000,
    "O_DSYNC": 0o10000,
    "O_DIRECT": 0o40000,
    "O_LARGEFILE": 0o100000,
    "O_DIRECTORY": 0o200000,
    "O_NOFOLLOW": 0o400000,
    "O_NOATIME": 0o1000000,
    "O_CLOEXEC": 0o2000000,
    "O_SYNC": 0o4010000,
    "O_PATH": 0o10000000,
    "O_TMPFILE": 0o20200000,
    # *at(2) flags
    "AT_SYMLINK_NOFOLLOW": 0x100,
    "AT_REMOVEDIR": 0x200,
    "AT_SYMLINK_FOLLOW": 0x400,
    "AT_EMPTY_PATH": 0x1000,
    # mmap(2) / mprotect(2)
    "PROT_NONE": 0,
    "PROT_READ": 1,
    "PROT_WRITE": 2,
    "PROT_EXEC": 4,
    "MAP_SHARED": 0x01,
    "MAP_PRIVATE": 0x02,
    "MAP_FIXED": 0x10,
    "MAP_ANONYMOUS": 0x20,
    "MAP_ANON": 0x20,
    # fcntl(2) commands
    "F_DUPFD": 0,
    "F_GETFD": 1,
    "F_SETFD": 2,
    "F_GETFL": 3,
    "F_SETFL": 4,
    "F_GETLK": 5,
    "F_SETLK": 6,
    "F_SETLKW": 7,
    "F_DUPFD_CLOEXEC": 1030,
    "F_ADD_SEALS": 1033,
    "F_GET_SEALS": 1034,
    # prctl(2) options
    "PR_SET_PDEATHSIG": 1,
    "PR_GET_PDEATHSIG": 2,
    "PR_GET_DUMPABLE": 3,
    "PR_SET_DUMPABLE": 4,
    "PR_SET_NAME": 15,
    "PR_GET_NAME": 16,
    "PR_GET_SECCOMP": 21,
    "PR_SET_SECCOMP": 22,
    "PR_CAPBSET_READ": 23,
    "PR_CAPBSET_DROP": 24,
    "PR_SET_SECUREBITS": 28,
    "PR_SET_NO_NEW_PRIVS": 38,
    "PR_GET_NO_NEW_PRIVS": 39,
    "PR_SET_VMA": 0x53564D41,
    # personality(2)
    "PER_LINUX": 0,
    "ADDR_NO_RANDOMIZE": 0x0040000,
    # masks
    "U32_MAX": 0xFFFFFFFF,
}

# Every errno name Python knows (EPERM, ENOSYS, EACCES, ...).
ERRNOS: dict[str, int] = {name: num for num, name in _errno.errorcode.items()}
ERRNOS.update({name: getattr(_errno, name) for name in dir(_errno) if name.startswith("E")})


def errno_name(num: int) -> str:
    return _errno.errorcode.get(num, str(num))


class ConstantError(ProfileError, ValueError):
    """A value that is neither a number nor a known constant; `suggestion` may help.

    A ProfileError and, as before, a ValueError; its `message` is the bare reason,
    for the callers that place it in a profile (file, line, column).
    """

    def __init__(self, token: str, suggestion: str | None) -> None:
        self.token = token
        self.suggestion = suggestion
        hint = f' (did you mean "{suggestion}"?)' if suggestion else ""
        super().__init__(f'unknown constant "{token}"{hint}')


def parse_value(text: str) -> int:
    """Parse `NAME|0x10|...` into one unsigned 64-bit integer."""
    total = 0
    for raw in text.split("|"):
        token = raw.strip()
        if not token:
            raise ConstantError(text, None)
        if token in CONSTANTS:
            total |= CONSTANTS[token]
            continue
        try:
            num = int(token, 0)
        except ValueError:
            import difflib  # only to word an error

            close = difflib.get_close_matches(token, list(CONSTANTS), n=1, cutoff=0.6)
            raise ConstantError(token, close[0] if close else None) from None
        if num < 0:
            num &= 0xFFFFFFFFFFFFFFFF
        if num > 0xFFFFFFFFFFFFFFFF:
            raise ConstantError(token, None)
        total |= num
    return total

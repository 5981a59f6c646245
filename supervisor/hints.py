"""What `warden run` tells the user after a seccomp kill: the call with its
arguments decoded where they are known, and how to allow it.

The loop users run to write a profile is: run, read which call was refused,
allow it, run again. So the kill's report names the call as a person reads it
(`socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)`), the profile line that allows
it, and the command that starts a profile of one's own from the one in use.
"""

from __future__ import annotations

import json
import signal

from warden.profiles.constants import CONSTANTS
from warden.supervisor.sandbox.notify import PATH_ARG
from warden.supervisor.sandbox.status import Complaint, Violation

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


def _own_name(profile: str) -> str:
    """The name suggested for a profile of one's own that starts from `profile`."""
    return "my-" + profile.rsplit("/", 1)[-1].removesuffix(".toml")


def how_to_allow(v: Violation, profile: str) -> list[str]:
    """The lines after a kill: the rule that allows the call, and the command that
    starts a profile of one's own from `profile`."""
    if v.syscall.startswith("unknown(") or v.arch not in ("x86_64", "native"):
        return [f"{v.syscall} on {v.arch} is not a call a profile can allow by name; "
                "see docs/profiles.md (architectures)"]
    mine = _own_name(profile)
    return [
        f'to allow it, add "{v.syscall}" to the allow list of a profile\'s [seccomp] table:',
        f"    warden profile new {mine} --from {profile}   # writes profiles/{mine}.toml",
        f'    then set allow = ["{v.syscall}"] in it and run with -p profiles/{mine}.toml',
        f"(warden profile explain {profile} {v.syscall} shows which rule refused it)",
    ]


def allow_all(complaints: tuple[Complaint, ...], profile: str) -> list[str]:
    """After --complain: the allow list that lets every named call through, and how
    to start the profile that holds it."""
    names = sorted({c.syscall for c in complaints
                    if not c.syscall.startswith("unknown(") and c.arch in ("x86_64", "native")})
    others = sorted({f"{c.syscall} ({c.arch})" for c in complaints
                     if c.syscall.startswith("unknown(") or c.arch not in ("x86_64", "native")})
    lines = []
    if names:
        mine = _own_name(profile)
        listed = ", ".join(f'"{n}"' for n in names)
        lines += [f"to allow them: warden profile new {mine} --from {profile}, then in "
                  f"profiles/{mine}.toml set", f"    allow = [{listed}]"]
    if others:
        lines.append("not allowable by name (another architecture or an unknown number): "
                     + ", ".join(others))
    return lines

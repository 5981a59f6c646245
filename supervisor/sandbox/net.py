"""Network and host-name isolation inside the child's new net and UTS namespaces.

A new network namespace starts with only a loopback device, and down; the
child brings loopback up so local sockets work and nothing else exists: no
route to the host or the outside. `--share-net` (or a profile with
`namespaces.net = false`) skips the new namespace entirely.
"""

from __future__ import annotations

import fcntl
import socket
import struct

from warden.errors import ChildFailed
from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.errors import SandboxError

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")


class NetError(SandboxError, ChildFailed, OSError):
    """Bringing up loopback or setting the host name failed."""


def child_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            req = bytearray(_IFREQ.pack(b"lo", 0))
            fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req, True)
            _name, flags = _IFREQ.unpack(req)
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | IFF_UP))
    except OSError as e:
        raise NetError(e.errno or 0, f"bringing up loopback: {e.strerror}") from None


def child_hostname(name: bytes) -> None:
    try:
        _sys.sethostname(name)
    except OSError as e:
        raise NetError(e.errno or 0, f"sethostname: {e.strerror}") from None

"""For the service tests: a worker interface that holds a call (and a client's fd), and the
clients the tests run as separate processes (`python -m tests.supervisor.service_helpers
KIND ADDRESS ...`). No tests here."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from typing import Annotated

import msgspec

from warden import ipc

Ms = Annotated[int, msgspec.Meta(ge=0, le=60_000)]


class Holder(ipc.Interface, name="test.Holder"):
    @ipc.call()
    def hold(self, ctx: ipc.Context, f: ipc.ReadFile, ms: Ms) -> int:
        """Sleep `ms` with the fd open, then answer its size."""
        raise NotImplementedError

    @ipc.call()
    def square(self, ctx: ipc.Context, n: Ms) -> int:
        raise NotImplementedError


class HolderImpl(Holder):
    def hold(self, ctx: ipc.Context, f: ipc.ReadFile, ms: int) -> int:
        with f:
            time.sleep(ms / 1000)
            return os.fstat(f.fileno()).st_size

    def square(self, ctx: ipc.Context, n: int) -> int:
        return n * n


def _describe(address: str) -> None:
    """Print the method names this uid's role may call, as JSON."""
    from warden.supervisor import service

    with service.connect(address, server_uids=[0, os.getuid()]) as s:
        print(json.dumps(sorted(m.name for m in s.describe())))


def _higher(address: str) -> None:
    """Call a method of the admin interface, whatever our role: print what happened."""
    from warden.supervisor import service

    with service.connect(address, pools={"h": Holder}, admin=True,
                         server_uids=[0, os.getuid()]) as s:
        print(json.dumps({"square": s.pool("h").square(5)}), flush=True)
        try:
            s.status()
        except service.ServiceRefused as e:
            print(json.dumps({"refused": str(e)}))
        else:
            print(json.dumps({"status": "answered"}))


def _forge(address: str, pid: str, uid: str, gid: str) -> None:
    """Send warden.describe with SCM_CREDENTIALS claiming (pid, uid, gid); print whether the
    kernel let it through and, if so, the methods the service answered with."""
    from warden.ipc.wire import KIND_CALL, method_id
    from warden.supervisor.service import WIRE_NAME, Methods, open_socket

    s = open_socket(address, server_uids=[0, os.getuid()])
    creds = struct.pack("3i", int(pid), int(uid), int(gid))
    frame = msgspec.msgpack.encode((KIND_CALL, method_id(WIRE_NAME, "warden.describe"), 1, {}))
    try:
        s.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])
    except OSError as e:
        print(json.dumps({"sendmsg": e.errno}))
        return
    reply = s.recv(1 << 17)
    if not reply:
        print(json.dumps({"sendmsg": 0, "closed": True}))
        return
    _kind, _m, _rid, payload = msgspec.msgpack.decode(reply)
    names = sorted(m.name for m in msgspec.convert(payload, Methods))
    print(json.dumps({"sendmsg": 0, "methods": names}))


def _flood(address: str, n: str) -> None:
    """Open `n` connections (non-blocking connects) and hold them until stdin closes."""
    held, refused = [], 0
    for _ in range(int(n)):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK)
        try:
            s.connect("\0" + address[1:] if address.startswith("@") else address)
        except (BlockingIOError, ConnectionRefusedError, OSError):
            s.close()
            refused += 1
            continue
        held.append(s)
    print(json.dumps({"connected": len(held), "refused": refused}), flush=True)
    sys.stdin.read()


def _hold(address: str, path: str, ms: str) -> None:
    """Call h.hold with the file at `path` (- for stdin) and wait for the answer (the test
    kills us first)."""
    from warden.supervisor import service

    with service.connect(address, pools={"h": Holder}, server_uids=[0, os.getuid()]) as s:
        fd = os.dup(0) if path == "-" else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        print("calling", flush=True)
        print(s.pool("h").hold(fd, int(ms)))


if __name__ == "__main__":
    {"describe": _describe, "higher": _higher, "forge": _forge, "flood": _flood,
     "hold": _hold}[sys.argv[1]](*sys.argv[2:])

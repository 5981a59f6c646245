"""A worker that probes what it can reach of its host and its siblings (imported by both sides).

Each probe makes the real call and reports the errno it got (0: it worked),
the way bubblewrap's try-syscall does.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import time
from typing import Annotated

import msgspec

from warden import ipc

Name = Annotated[str, msgspec.Meta(max_length=64)]
Needle = Annotated[bytes, msgspec.Meta(max_length=64)]

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_IPC_CREAT = 0o1000
_NR_KEYCTL = {"x86_64": 250, "aarch64": 219}[os.uname().machine]
KEYCTL_READ = 11


class Probe(ipc.Interface, name="test.Probe"):
    @ipc.call()
    def escape(self, ctx: ipc.Context, marker: Name) -> int:
        """Clear the own parent-death signal and leave a setsid'd grandchild behind,
        both named `marker` (/proc/PID/comm). Returns the errno of the prctl."""
        raise NotImplementedError

    @ipc.call()
    def proc_hits(self, ctx: ipc.Context, needle: Needle) -> list[int]:
        """[cmdline/environ files read with content, those containing `needle`]."""
        raise NotImplementedError

    @ipc.call()
    def probe(self, ctx: ipc.Context, what: Name, key: int) -> int:
        """One cross-worker probe (see ProbeImpl.probe); an errno, 0 if it worked."""
        raise NotImplementedError


def _set_comm(name: str) -> None:
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(_PR_SET_NAME, ctypes.c_ulong(ctypes.addressof(buf)), 0, 0, 0)


def _errno(ret: int) -> int:
    return ctypes.get_errno() if ret == -1 else 0


class ProbeImpl(Probe):
    def __init__(self) -> None:
        self.held: list[socket.socket] = []

    def escape(self, ctx: ipc.Context, marker: str) -> int:
        _set_comm(marker)
        err = _errno(_libc.prctl(_PR_SET_PDEATHSIG, 0, 0, 0, 0))
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                _set_comm(marker)
                _libc.prctl(_PR_SET_PDEATHSIG, 0, 0, 0, 0)
                os.write(w, b"!")
                while True:
                    time.sleep(3600)
            os._exit(0)
        os.read(r, 1)  # the grandchild exists and is named
        os.wait()
        os.close(r)
        os.close(w)
        return err

    def proc_hits(self, ctx: ipc.Context, needle: bytes) -> list[int]:
        read = hits = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            for part in ("cmdline", "environ"):
                try:
                    with open(f"/proc/{name}/{part}", "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                read += bool(data.strip(b"\0"))
                hits += needle in data
        return [read, hits]

    def probe(self, ctx: ipc.Context, what: str, key: int) -> int:
        name = f"\0warden-test-{key}"
        try:
            if what == "bind_abstract":
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.bind(name)
                s.listen()
                self.held.append(s)
                return 0
            if what == "connect_abstract":
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                    c.connect(name)
                return 0
            if what == "shm_create":
                return _errno(_libc.shmget(key, 4096, _IPC_CREAT | 0o666))
            if what == "shm_get":
                return _errno(_libc.shmget(key, 0, 0))
            if what == "tmp_write":
                with open(f"/tmp/warden-test-{key}", "w") as f:
                    f.write("x")
                return 0
            if what == "tmp_see":
                return 0 if os.path.exists(f"/tmp/warden-test-{key}") else errno.ENOENT
            if what == "read_key":  # keyctl(KEYCTL_READ, serial, buf, len)
                buf = ctypes.create_string_buffer(256)
                return _errno(_libc.syscall(_NR_KEYCTL, KEYCTL_READ, key, buf, 256))
            if what == "list_key":  # is the key's serial in /proc/keys?
                with open("/proc/keys") as f:
                    serials = {int(line.split()[0], 16) for line in f if line.strip()}
                return 0 if key in serials else errno.ENOENT
            if what == "inet":  # a TCP socket to 127.0.0.1:key (0: only create it)
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    if key:
                        t.connect(("127.0.0.1", key))
                return 0
            if what == "socket_inet":
                socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
                return 0
            if what == "mount":  # a tmpfs over /tmp
                return _errno(_libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
            if what == "sleep":
                time.sleep(key / 1000)
                return 0
        except OSError as e:
            return e.errno or -1
        return -1

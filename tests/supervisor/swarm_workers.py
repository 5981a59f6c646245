"""Hostile workers for the swarm tests (tests/supervisor/test_supervisor_swarm_*.py).

Imported by both sides (and preloaded by the zygote). `SwarmImpl.act(what, arg)` breaks
one rule of the channel, the process or the report from inside a call; every other
method is honest. Each worker counts the calls it has received: the supervisor numbers
the calls on a channel 1, 2, 3, ..., so the n-th call it receives has request id n,
which is what a forged reply must name to be taken for a real one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import time
from typing import Annotated

import msgspec

from tests.supervisor.workers import Small
from warden import ipc
from warden.ipc.wire import KIND_REPLY, method_id
from warden.supervisor import worker_main

Name = Annotated[str, msgspec.Meta(max_length=64)]
ORPHAN = b"swarm-orphan"  # the comm of every process a hostile worker leaves behind
PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
# A start failure's text and a reply's field name that try to forge a supervisor log line.
FORGED_LINE = "WARNING:warden.supervisor:worker w1 exited: ok"
FORGERY = f"refusing to start\n{FORGED_LINE}\x1b[2K\r\x1b[1A\u2028{FORGED_LINE}"


class Info(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    n: Small


class Swarm(ipc.Interface, name="test.Swarm"):
    @ipc.call()
    def square(self, ctx: ipc.Context, n: Small) -> Small:
        raise NotImplementedError

    @ipc.call()
    def act(self, ctx: ipc.Context, what: Name, arg: int = 0) -> int:
        raise NotImplementedError

    @ipc.call()
    def info(self, ctx: ipc.Context, what: Name) -> Info:
        raise NotImplementedError


ACT = method_id("test.Swarm", "act")
INFO = method_id("test.Swarm", "info")


def _name(comm: bytes) -> None:
    ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(comm), 0, 0, 0)


def _frame(method: int, rid: int, value: object) -> bytes:
    return msgspec.msgpack.encode((KIND_REPLY, method, rid, value))


def _orphan(setsid: bool, double: bool, clear_pdeathsig: bool) -> None:
    """Leave a process behind that sleeps as ORPHAN (double: reparented, as a daemon)."""
    if os.fork() == 0:
        try:
            if setsid:
                os.setsid()
            if double and os.fork() != 0:
                os._exit(0)
            if clear_pdeathsig:
                ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)
            _name(ORPHAN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            while True:
                time.sleep(1)
        finally:
            os._exit(0)
    if double:
        with_status = os.wait()
        del with_status


class SwarmImpl(Swarm):
    def __init__(self) -> None:
        self.calls = 0

    def square(self, ctx: ipc.Context, n: int) -> int:
        self.calls += 1
        return n * n

    def info(self, ctx: ipc.Context, what: str) -> Info:
        self.calls += 1
        if what == "forge_field":  # the reply names a field that carries a forged line
            os.write(worker_main.CHANNEL_FD,
                     _frame(INFO, self.calls, {f"x\n{FORGED_LINE}\x1b[31m": 1}))
            while True:
                time.sleep(1)
        return Info(n=self.calls)

    def act(self, ctx: ipc.Context, what: str, arg: int = 0) -> int:
        self.calls += 1
        rid = self.calls
        fd = worker_main.CHANNEL_FD
        if what.startswith("reply_") and arg > 0:  # after its caller gave up (arg ms)
            time.sleep(arg / 1000)
        if what == "reply_twice":  # a forged reply first, then the real one
            os.write(fd, _frame(ACT, rid, 7))
            return 8
        if what == "reply_unknown":  # a reply to a call never made
            os.write(fd, _frame(ACT, rid + 1000, 7))
            return 0
        if what == "reply_flood":  # replies to every id as fast as it can
            n = rid + 1
            while True:
                os.write(fd, _frame(ACT, n, n))
                n += 1
        if what == "reply_fds":  # the reply carries fds; act() declares none
            r, w = os.pipe()
            socket.send_fds(socket.socket(fileno=os.dup(fd)), [_frame(ACT, rid, 0)], [r, w, r])
            while True:
                time.sleep(1)
        if what == "reply_wrong_method":  # a reply naming another method than was called
            os.write(fd, _frame(INFO, rid, {"n": 1}))
            while True:
                time.sleep(1)
        if what == "shutdown_rd":  # stop receiving, answer this call, carry on
            socket.socket(fileno=os.dup(fd)).shutdown(socket.SHUT_RD)
            return 1
        if what == "dup2_hang_up":  # the channel moves to another fd; fd 3 closes
            os.dup2(fd, 57)
            os.close(fd)
            while True:
                time.sleep(1)
        if what == "sigstop":
            os.kill(os.getpid(), signal.SIGSTOP)
            return 1
        if what == "raise_sigstop":
            getattr(ctypes.CDLL(None), "raise")(signal.SIGSTOP)  # libc's raise(3)
            return 1
        if what == "orphan_exit":  # a child keeps the channel open; the worker exits `arg`
            _orphan(setsid=False, double=False, clear_pdeathsig=False)
            os._exit(arg)
        if what == "daemon":  # a setsid double-forked daemon, PDEATHSIG cleared; serves on
            _orphan(setsid=True, double=True, clear_pdeathsig=True)
            return 0
        if what == "daemon_exit":
            _orphan(setsid=True, double=True, clear_pdeathsig=True)
            os._exit(arg)
        if what == "clear_pdeathsig":  # the worker itself: its answer is the errno
            libc = ctypes.CDLL(None, use_errno=True)
            r = libc.prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)
            return ctypes.get_errno() if r == -1 else 0
        if what == "exit":
            os._exit(arg)
        if what == "stderr_forgery":  # lines on its stdout/stderr that look like ours
            for out in (1, 2):
                try:
                    os.write(out, f"\n{FORGED_LINE}\n".encode())
                except OSError as e:
                    return e.errno or -1
            return 0
        if what == "stdio_is":  # where its fds 0-2 lead (st_rdev: /dev/null is 1:3)
            return sum(1 << i for i in range(3) if os.fstat(i).st_rdev == os.makedev(1, 3))
        if what == "hang":
            while True:
                time.sleep(1)
        return -1


class ForgingStart(Swarm):
    """Fails in its constructor with an error text that tries to forge a log line."""

    def __init__(self) -> None:
        raise RuntimeError(FORGERY)


class HugeForgingStart(Swarm):
    def __init__(self) -> None:
        raise RuntimeError("\n" * 5000 + FORGERY)


class ExitSetupCode(Swarm):
    """Exits with the setup-error code before it is ready (no record of its own)."""

    def __init__(self) -> None:
        os._exit(125)


class NeverReady(Swarm):
    def __init__(self) -> None:
        while True:
            time.sleep(1)


class FloodsBeforeReady(Swarm):
    """Writes on its stdout, its stderr and its channel before it is ready, then hangs."""

    def __init__(self) -> None:
        for _ in range(200):
            for out in (1, 2):
                with contextlib.suppress(OSError):
                    os.write(out, f"{FORGED_LINE}\n".encode() * 20)
        while True:
            time.sleep(1)


class ChannelFloodBeforeReady(Swarm):
    def __init__(self) -> None:
        while True:
            os.write(worker_main.CHANNEL_FD, b"\x93\x02\x00\x01" + b"\x00" * 60)

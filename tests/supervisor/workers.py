"""Interfaces and worker implementations for the supervisor tests (imported by both sides)."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Annotated

import msgspec

from warden import ipc
from warden.supervisor import worker_main

Small = Annotated[int, msgspec.Meta(ge=0, le=1 << 20)]
Name = Annotated[str, msgspec.Meta(max_length=64)]


class Calc(ipc.Interface, name="test.Calc"):
    @ipc.call()
    def square(self, ctx: ipc.Context, n: Small) -> Small:
        raise NotImplementedError

    @ipc.call()
    def sleep(self, ctx: ipc.Context, ms: Small) -> Small:
        raise NotImplementedError

    @ipc.call()
    def act(self, ctx: ipc.Context, what: Name, arg: int = 0) -> int:
        """Do something hostile (see Hostile.act); returns an errno or a result."""
        raise NotImplementedError

    @ipc.call()
    def whoami(self, ctx: ipc.Context) -> Name:
        raise NotImplementedError

    @ipc.call()
    def ping(self, ctx: ipc.Context) -> Small:
        raise NotImplementedError

    @ipc.message()
    def note(self, ctx: ipc.Context, data: bytes) -> None:
        raise NotImplementedError

    @ipc.call()
    def give_file(self, ctx: ipc.Context, kind: Name) -> ipc.ReadFile:
        """Hand back an fd claimed to be a readable regular file (a pipe when hostile)."""
        raise NotImplementedError


class Host(ipc.Interface, name="test.Host"):
    """Served by the supervisor to workers."""

    @ipc.call(permission="host.secret")
    def secret(self, ctx: ipc.Context) -> Name:
        raise NotImplementedError

    @ipc.call()
    def whoami(self, ctx: ipc.Context) -> Name:
        raise NotImplementedError


class CalcImpl(Calc):
    def square(self, ctx: ipc.Context, n: int) -> int:
        return n * n

    def sleep(self, ctx: ipc.Context, ms: int) -> int:
        time.sleep(ms / 1000)
        return ms

    def whoami(self, ctx: ipc.Context) -> str:
        remote = worker_main.host()
        return str(remote.whoami()) if remote is not None else "no host"

    def act(self, ctx: ipc.Context, what: str, arg: int = 0) -> int:
        if what == "secret":
            return len(worker_main.host().secret())
        return _act(what, arg)

    def note(self, ctx: ipc.Context, data: bytes) -> None:
        pass

    def ping(self, ctx: ipc.Context) -> int:
        return 1

    def give_file(self, ctx: ipc.Context, kind: str) -> ipc.ReadFile:
        r, _w = os.pipe()
        return ipc.ReadFile(r)


class HostImpl(Host):
    def __init__(self) -> None:
        self.contexts: list[ipc.Context] = []

    def secret(self, ctx: ipc.Context) -> str:
        return "s3cret"

    def whoami(self, ctx: ipc.Context) -> str:
        self.contexts.append(ctx)
        return f"{ctx.peer_id} {ctx.extra['profile']} {ctx.pid}"


def _errno_of(fn: object) -> int:
    try:
        fn()  # type: ignore[operator]
    except OSError as e:
        return e.errno or -1
    return 0


def _proc_attack() -> int:
    """Successes against processes other than itself, or -(targets tried) if all failed."""
    me = os.readlink("/proc/self")
    wins = seen = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == me:
            continue
        try:
            fd = os.open(f"/proc/{name}", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        seen += 1
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            wins += 1
        except OSError:
            pass
        finally:
            os.close(fd)
        try:
            with open(f"/proc/{name}/mem", "rb") as f:
                f.read(1)
            wins += 1
        except OSError:
            pass
    return wins or -seen


def _act(what: str, arg: int) -> int:
    """Hostile actions; each returns 0 if it worked or the errno the kernel gave."""
    if what == "bad_frame":  # garbage on the channel: a bad message
        os.write(worker_main.CHANNEL_FD, b"\xff" * 40)
        time.sleep(5)
        return 0
    if what == "burn":  # arg ms of CPU, then answer: a busy worker
        end = time.monotonic_ns() + arg * 1_000_000
        while time.monotonic_ns() < end:
            pass
        return arg
    if what == "half_frame":  # a frame claiming more than it holds
        os.write(worker_main.CHANNEL_FD, b"\x01")
        time.sleep(5)
        return 0
    if what == "flood":  # one-way frames as fast as it can
        while True:
            os.write(worker_main.CHANNEL_FD, b"\x00" * 64)
    if what == "kill":  # signal a pid (the supervisor's, a sibling's)
        return _errno_of(lambda: os.kill(arg, signal.SIGKILL))
    if what == "kill_all":
        return _errno_of(lambda: os.kill(-1, signal.SIGKILL))
    if what == "kill_group":
        return _errno_of(lambda: os.kill(0, signal.SIGKILL))
    if what == "ptrace":  # PTRACE_ATTACH = 16
        libc = ctypes.CDLL(None, use_errno=True)
        r = libc.ptrace(16, arg, 0, 0)
        return ctypes.get_errno() if r == -1 else 0
    if what == "exit":
        os._exit(arg)
    if what == "segv":
        ctypes.string_at(0)
    if what == "hang":
        while True:
            time.sleep(1)
    if what == "spin":
        while True:
            pass
    if what == "open":  # filesystem access: killed under strict
        return _errno_of(lambda: os.close(os.open("/etc/hostname", os.O_RDONLY)))
    if what == "fork_bomb":
        n = 0
        try:
            while n < arg:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
        except OSError as e:
            return -(e.errno or 1)
        return n
    if what == "alloc":  # arg MiB
        try:
            b = bytearray(arg << 20)
            return len(b) >> 20
        except MemoryError:
            return -12
    if what == "getpid":
        return os.getpid()
    if what == "syscall":  # a raw system call by number, arguments 0
        libc = ctypes.CDLL(None, use_errno=True)
        r = libc.syscall(arg, 0, 0, 0)
        return ctypes.get_errno() if r == -1 else 0
    if what == "fd_mask":  # the fds it holds, as a bit mask (with the listing's own, lowest free)
        return sum(1 << int(n) for n in os.listdir("/proc/self/fd") if int(n) < 62)
    if what == "proc_attack":  # every process its /proc shows: signal it, read its memory
        return _proc_attack()
    return -1


class BadOnStart(Calc):
    """Fails in its constructor: the worker never becomes ready."""

    def __init__(self) -> None:
        raise RuntimeError("refusing to start")


class ExitOnStart(Calc):
    def __init__(self) -> None:
        os._exit(3)


class SickImpl(CalcImpl):
    """Answers calls but not its health check."""

    def ping(self, ctx: ipc.Context) -> int:
        time.sleep(30)
        return 0


class SlowStart(CalcImpl):
    """Takes 10 s to build: a spawn() of it can be cancelled while it starts."""

    def __init__(self) -> None:
        time.sleep(10)


class LivenessImpl(CalcImpl):
    """Breaks the one-channel-one-process rule from inside a call (test_supervisor_liveness.py).

    act("hang_up"): closes fd 3 and keeps running; act("shutdown"): shuts fd 3 down
    (arg: SHUT_WR or SHUT_RDWR) and keeps running; act("exec"): becomes /bin/sleep
    (fd 3 is close-on-exec); act("unknown_method"): a well-formed frame calling a
    method id the supervisor does not serve; act("exit_later"): answers, then exits 0
    from a thread while idle. Anything else: CalcImpl.act.
    """

    def act(self, ctx: ipc.Context, what: str, arg: int = 0) -> int:
        if what == "hang_up":
            os.close(worker_main.CHANNEL_FD)
            while True:
                time.sleep(1)
        if what == "shutdown":
            import socket

            socket.socket(fileno=os.dup(worker_main.CHANNEL_FD)).shutdown(arg)
            while True:
                time.sleep(1)
        if what == "exit_later":
            import threading

            threading.Timer(0.05, os._exit, (0,)).start()
            return 0
        if what == "exec":
            os.execv("/bin/sleep", ["sleep", "1000"])
        if what == "unknown_method":
            os.write(worker_main.CHANNEL_FD, msgspec.msgpack.encode((0, 0x1234ABCD, 1 << 40, b"")))
            while True:
                time.sleep(1)
        return super().act(ctx, what, arg)

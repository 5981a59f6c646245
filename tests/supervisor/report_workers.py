"""A worker for tests/supervisor/test_supervisor_reports_workers.py: refused calls it tries
to withdraw
(its own interval timer, another thread ending the process) or to make through the
i386 and x32 tables. Imported by the zygote (preload) and by the workers."""

from __future__ import annotations

import _thread
import ctypes
import os
import signal
import threading
import time

from tests.i386 import int80_getpid
from tests.supervisor.workers import CalcImpl
from warden import ipc

NR_GETPPID = 110  # killed by the test's profile, allowed by the zygote's own filter
X32_BIT = 0x40000000
NR_GETPID_X86_64 = 39


def _timer_loop() -> int:
    """2000 refused calls under a 20 µs ITIMER_REAL whose handler interrupts them. The
    handler is a C function (sched_yield, async-signal-safe, ignores its argument)
    installed without SA_RESTART, so no Python code runs in the signal and each
    interrupted call returns EINTR while the loop goes on. Returns how many did."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
    handler = ctypes.cast(libc.sched_yield, ctypes.c_void_p).value
    old = libc.signal(signal.SIGALRM, handler)
    libc.siginterrupt(signal.SIGALRM, 1)
    signal.setitimer(signal.ITIMER_REAL, 0.00002, 0.00002)
    eintr = 0
    try:
        for _ in range(2000):
            if libc.syscall(NR_GETPPID) == -1 and ctypes.get_errno() == 4:
                eintr += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        libc.signal(signal.SIGALRM, old)
    return eintr


def _thread_exit() -> int:
    """A thread makes the refused call; once the kernel shows it waiting in it, exit_group.

    Bounded: a thread that never shows up (or never reaches the call) ends the worker
    with 3, which the test reports, instead of leaving it spinning."""
    libc = ctypes.CDLL(None, use_errno=True)
    tid: list[int] = []

    def call() -> None:
        tid.append(threading.get_native_id())
        libc.syscall(NR_GETPPID)

    _thread.start_new_thread(call, ())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if tid:
            try:
                with open(f"/proc/self/task/{tid[0]}/syscall") as f:
                    if f.read().split()[0] == str(NR_GETPPID):
                        os._exit(0)
            except OSError:
                pass
    os._exit(3)


class ReportsImpl(CalcImpl):
    def act(self, ctx: ipc.Context, what: str, arg: int = 0) -> int:
        if what == "timer_loop":
            return _timer_loop()
        if what == "thread_exit":
            return _thread_exit()
        if what == "int80":
            return int80_getpid()
        if what == "x32":
            return int(ctypes.CDLL(None).syscall(NR_GETPID_X86_64 | X32_BIT))
        return super().act(ctx, what, arg)

"""Targets whose import-time or constructor code tries to outlive the filter that comes
after it (test_supervisor_prefilter.py). Each runs under the launch filter only, as documented."""

from __future__ import annotations

import ctypes
import os
import struct
import threading
import time

from tests.supervisor.workers import CalcImpl
from warden import ipc


class ThreadBeforeFilter(CalcImpl):
    """Starts a thread in its constructor; act("thread_open") lets it open a file."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.result: list[int] = []

        def later() -> None:
            self.go.wait()
            try:
                os.close(os.open("/etc/hostname", os.O_RDONLY))
                self.result.append(0)
            except OSError as e:
                self.result.append(e.errno or -1)

        self.thread = threading.Thread(target=later, daemon=True)
        self.thread.start()

    def act(self, ctx: ipc.Context, what: str, arg: int = 0) -> int:
        if what != "thread_open":
            return super().act(ctx, what, arg)
        self.go.set()
        self.thread.join()
        return self.result[0]


class ForkBeforeFilter(CalcImpl):
    """Leaves a double-forked grandchild behind before the filter is loaded."""

    def __init__(self) -> None:
        if os.fork() == 0:
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        os.wait()


class OwnListenerBeforeFilter(CalcImpl):
    """Loads an allow-all filter of its own with a listener, hoping to hand that over."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        allow = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET | K: SECCOMP_RET_ALLOW
        buf = ctypes.create_string_buffer(allow, len(allow))

        class Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        prog = Fprog(1, ctypes.addressof(buf))
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog)
        fd = libc.syscall(317, 1, 1 << 3, ctypes.byref(prog))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "could not load the target's own filter")

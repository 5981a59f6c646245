"""Run code in a real forked child under a compiled seccomp filter.

The child sets no_new_privs, loads the BPF with the seccomp(2) system call
(no libseccomp involved, exactly what the sandbox and bwrap do with the
bytes), then either makes raw system calls and reports (return, errno) over a
pipe - bubblewrap's try-syscall idea - or runs Python code or execs a program.
Nothing of the kernel is mocked.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import signal
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
NR_SECCOMP = 317  # x86_64

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@dataclass
class ChildResult:
    status: int
    output: bytes

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None

    @property
    def killed_by_seccomp(self) -> bool:
        return self.signal == signal.SIGSYS

    def json(self) -> object:
        return json.loads(self.output)


def _load(code: bytes) -> None:
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        os._exit(120)
    rc = _libc.syscall(ctypes.c_long(NR_SECCOMP), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                       ctypes.c_long(0), ctypes.byref(prog))
    if rc != 0:
        os._exit(121)


def _wait(pid: int, r: int) -> ChildResult:
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return ChildResult(status, b"".join(chunks))


def run_python(code: bytes, fn: Callable[[], object]) -> ChildResult:
    """Fork; in the child load the filter, run fn() and send its result as JSON."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _load(code)
            result = json.dumps(fn()).encode()
            os.write(w, result)
        except BaseException as e:  # report, never return into pytest
            try:
                os.write(w, json.dumps({"exception": repr(e)}).encode())
            finally:
                os._exit(3)
        os._exit(0)
    os.close(w)
    return _wait(pid, r)


def try_syscalls(code: bytes, calls: Sequence[tuple[int, Sequence[int]]]) -> ChildResult:
    """Fork; load the filter; make each raw call; report (ret, errno) pairs.

    Results go to shared memory mapped before the fork, so the child makes no
    system call of its own between the filter and exit_group (which the
    filter must allow, or kill). A call the filter kills ends the child with
    SIGSYS; only the calls before it have records.
    """
    n = len(calls)
    shm = mmap.mmap(-1, 8 + 16 * max(n, 1))
    count = ctypes.c_int64.from_buffer(shm, 0)
    slots = (ctypes.c_int64 * (2 * max(n, 1))).from_buffer(shm, 8)
    prepared = [(ctypes.c_long(nr), [ctypes.c_long(a if a < 1 << 63 else a - (1 << 64))
                                      for a in args]) for nr, args in calls]
    pid = os.fork()
    if pid == 0:
        _load(code)
        for i, (nr, args) in enumerate(prepared):
            ctypes.set_errno(0)
            ret = _libc.syscall(nr, *args)
            slots[2 * i] = ret
            slots[2 * i + 1] = ctypes.get_errno() if ret == -1 else 0
            count.value = i + 1
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    out = struct.pack(f"={2 * count.value}q", *slots[: 2 * count.value])
    del count, slots
    shm.close()
    return ChildResult(status, out)


def records(result: ChildResult) -> list[tuple[int, int]]:
    return [(a, b) for a, b in struct.iter_unpack("=qq", result.output)]


def exec_under(code: bytes, argv: Sequence[str], env: dict[str, str] | None = None) -> ChildResult:
    """Fork; load the filter; exec argv with stdout+stderr on a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 1)
        os.dup2(w, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        try:
            _load(code)
            os.execve(argv[0], list(argv), env if env is not None else {"PATH": "/usr/bin:/bin"})
        finally:
            os._exit(127)
    os.close(w)
    return _wait(pid, r)

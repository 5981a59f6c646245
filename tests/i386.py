"""The i386 entry point from 64-bit code, for the tests that attack the filters' arch check.

One copy of the machine code, used on the host (does this kernel run i386 calls at all?)
and inside workers (the attack itself)."""

from __future__ import annotations

import ctypes
import mmap
import os

NR_GETPID_I386 = 20


def int80_getpid() -> int:
    """getpid through int $0x80: mov eax, 20; int 0x80; ret."""
    code = bytes([0xB8, NR_GETPID_I386, 0, 0, 0, 0xCD, 0x80, 0xC3])
    buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(code)
    fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))
    return int(fn())


def emulation_works() -> bool:
    """Whether this kernel runs i386 calls (ia32 emulation may be off), tried unfiltered
    in a forked child so a crash costs nothing."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, str(int80_getpid() == os.getpid()).encode())
        finally:
            os._exit(0)
    os.close(w)
    works = os.read(r, 16) == b"True"
    os.close(r)
    os.waitpid(pid, 0)
    return works

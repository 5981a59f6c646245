"""The few libseccomp calls a profile needs before compiling: syscall names and the version.

pyseccomp (used by the compiler) locates the library with ctypes.util.find_library,
which runs `ldconfig -p` and imports subprocess, tempfile and shutil: 10-20 ms
at every `warden run`. Resolving names and reading the version only needs the
library itself, opened here by its soname (the same file find_library names),
so loading a profile whose filter is cached never imports pyseccomp.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

NATIVE = 0  # SCMP_ARCH_NATIVE
SONAME = "libseccomp.so.2"


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


@functools.cache
def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(SONAME)
    except OSError:  # an unusual layout: let pyseccomp's own search find it
        import pyseccomp

        lib = pyseccomp._libseccomp
    lib.seccomp_syscall_resolve_name_arch.argtypes = (ctypes.c_uint32, ctypes.c_char_p)
    lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_num_arch.argtypes = (ctypes.c_uint32, ctypes.c_int)
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    lib.seccomp_version.argtypes = ()
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    lib.seccomp_arch_native.argtypes = ()
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    return lib


@functools.cache
def _free() -> Any:
    free = ctypes.CDLL(None).free
    free.argtypes = (ctypes.c_void_p,)
    free.restype = None
    return free


def resolve_name(name: str) -> int:
    """The native number of `name`; negative (__NR_SCMP_ERROR etc.) when there is none."""
    return int(_lib().seccomp_syscall_resolve_name_arch(NATIVE, name.encode()))


def resolve_number(nr: int) -> str | None:
    """The name libseccomp gives native syscall `nr`, or None."""
    ptr = _lib().seccomp_syscall_resolve_num_arch(NATIVE, nr)
    if not ptr:
        return None
    try:
        return ctypes.string_at(ptr).decode()
    finally:
        _free()(ptr)


@functools.cache
def version() -> tuple[int, int, int]:
    v = _lib().seccomp_version().contents
    return (v.major, v.minor, v.micro)


@functools.cache
def native_arch() -> int:
    """libseccomp's token (AUDIT_ARCH_*) for this process's architecture."""
    return int(_lib().seccomp_arch_native())

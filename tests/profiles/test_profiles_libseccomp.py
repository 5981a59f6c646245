"""warden.profiles.libseccomp (the light binding used to load profiles) agrees with pyseccomp."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyseccomp

from tests.interpreter import PYTHON, python_env
from warden.profiles import libseccomp, syscalls

ROOT = Path(__file__).resolve().parents[2]


def test_numbers_and_names_agree_with_pyseccomp() -> None:
    for nr in range(1024):
        try:
            theirs: str | None = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, nr).decode()
        except ValueError:
            theirs = None
        assert libseccomp.resolve_number(nr) == theirs, nr
        if theirs is not None:
            assert libseccomp.resolve_name(theirs) == nr
    for name in ("read", "openat", "no_such_call", "", "socketcall", "ipc", "io_uring_setup"):
        assert libseccomp.resolve_name(name) == pyseccomp.resolve_syscall(
            pyseccomp.Arch.NATIVE, name), name
    assert syscalls.number("no_such_call") is None


def test_the_version_and_arch_are_libseccomps() -> None:
    major, minor, micro = libseccomp.version()
    assert (major, minor) >= (2, 5)
    assert micro >= 0
    assert libseccomp.native_arch() == pyseccomp.system_arch()


def test_loading_a_profile_does_not_import_pyseccomp() -> None:
    """The point of the module: `warden run` with a cached filter never loads pyseccomp."""
    code = ("import sys; from warden.profiles import load_profile; load_profile('default'); "
            "print('pyseccomp' in sys.modules, 'warden.profiles.compiler' in sys.modules)")
    # python_env: the ordinary-uid run's interpreter finds warden through PYTHONPATH.
    out = subprocess.run([PYTHON, "-c", code], env=python_env(str(ROOT)),
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]

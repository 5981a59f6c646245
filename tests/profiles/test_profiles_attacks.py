"""A hostile child tries to get past the compiled filters; each attempt must fail."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.i386 import emulation_works, int80_getpid
from tests.profiles.profiles_child import records, run_python, try_syscalls
from warden.profiles import ProfileError, compiler, load_profile, load_text, syscalls
from warden.profiles.parser import parse_text

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "profiles" / "builtin"


def test_i386_entry_point_is_killed() -> None:
    allow_all = compiler.compile_policy(load_profile("default").seccomp)
    if not emulation_works():  # without a filter: does this kernel run i386 calls?
        pytest.skip("this kernel has no i386 emulation (int 0x80 does nothing useful)")
    result = run_python(allow_all, int80_getpid)
    assert result.signal == signal.SIGSYS


@pytest.mark.parametrize("name", ["default", "network-client", "python-worker"])
def test_tiocsti_with_upper_bits_set_is_still_refused(name: str) -> None:
    ioctl = syscalls.number("ioctl") or 0
    requests = [0x5412, 0x1_0000_5412, 0xFFFF_FFFF_0000_5412, 0x541C, 0x8000_0000_0000_541C]
    result = try_syscalls(compiler.compile_policy(load_profile(name).seccomp),
                          [(ioctl, (0, req, 0)) for req in requests])
    assert records(result) == [(-1, 1)] * len(requests)  # EPERM every time


@pytest.mark.parametrize("flag", ["CLONE_NEWUSER", "CLONE_NEWNS", "CLONE_NEWPID", "CLONE_NEWNET",
                                  "CLONE_NEWIPC", "CLONE_NEWUTS", "CLONE_NEWCGROUP"])
def test_every_namespace_flag_is_refused_even_mixed_with_thread_flags(flag: str) -> None:
    from warden.profiles.constants import CONSTANTS

    clone = syscalls.number("clone") or 0
    flags = [CONSTANTS[flag] | signal.SIGCHLD,
             CONSTANTS[flag] | 0x7FFF_FFFF_0000_0000,
             CONSTANTS[flag] | CONSTANTS["CLONE_VM"] | CONSTANTS["CLONE_THREAD"]
             | CONSTANTS["CLONE_SIGHAND"]]
    for name in ("default", "python-worker"):
        code = compiler.compile_policy(load_profile(name).seccomp)
        result = try_syscalls(code, [(clone, (f, 0, 0, 0, 0)) for f in flags])
        assert records(result) == [(-1, 1)] * len(flags), name


def test_a_child_cannot_lift_its_filter() -> None:
    """Loading a permissive filter on top only adds restrictions (the kernel
    takes the strictest answer), and prctl cannot turn seccomp off."""
    code = compiler.compile_policy(load_profile("default").seccomp)
    mount = syscalls.number("mount") or 0
    allow_mount = compiler.compile_policy(
        load_text('[seccomp]\ndefault-action = "allow"\n').seccomp)

    def job() -> list[int]:
        import ctypes as c

        libc = c.CDLL(None, use_errno=True)
        buf = c.create_string_buffer(allow_mount, len(allow_mount))

        class Prog(c.Structure):
            _fields_ = [("len", c.c_ushort), ("filter", c.c_void_p)]

        prog = Prog(len(allow_mount) // 8, c.cast(buf, c.c_void_p))
        loaded = libc.syscall(317, 1, 0, c.byref(prog))
        mode_off = libc.prctl(22, 0, 0, 0, 0)  # PR_SET_SECCOMP, SECCOMP_MODE_DISABLED(0)
        c.set_errno(0)
        rc = libc.syscall(mount, 0, 0, 0, 0, 0)
        return [loaded, mode_off, rc, c.get_errno()]

    result = run_python(code, job)
    assert result.exit_code == 0
    loaded, mode_off, rc, err = result.json()  # type: ignore[misc]
    assert loaded == 0 and mode_off == -1
    assert (rc, err) == (-1, 1)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(BUILTIN_DIR.glob("*.toml"))), st.randoms(use_true_random=False))
def test_mangled_profiles_only_ever_raise_profile_error(path: Path, rnd: random.Random) -> None:
    text = path.read_text()
    chars = list(text)
    for _ in range(rnd.randint(1, 4)):
        i = rnd.randrange(len(chars))
        op = rnd.choice(["delete", "insert", "replace"])
        junk = rnd.choice(['"', "'", "[", "]", "{", "}", "=", ",", "\n", "#", "@", "x", "0", " "])
        if op == "delete":
            del chars[i]
        elif op == "insert":
            chars.insert(i, junk)
        else:
            chars[i] = junk
    try:
        layer = parse_text("".join(chars), "mangled.toml")
    except ProfileError as e:
        assert e.file == "mangled.toml"
        assert e.line >= 0 and e.column >= 0
        str(e)
        return
    assert layer.file == "mangled.toml"

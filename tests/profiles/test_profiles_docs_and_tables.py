"""The generated parts of docs/profiles.md, the group table and the constants."""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import socket
import termios
from pathlib import Path

import pytest
from click.testing import CliRunner

from warden.profiles import docgen, syscalls
from warden.profiles.cli import profile_group
from warden.profiles.constants import CONSTANTS, ConstantError, parse_value

DOC = Path(__file__).resolve().parents[2] / "docs" / "profiles.md"
README = Path(__file__).resolve().parents[2] / "README.md"


def test_generated_sections_are_current() -> None:
    text = DOC.read_text()
    assert docgen.render(text) == text, "run: python -m warden.profiles.docgen"


def test_every_group_and_member_is_documented() -> None:
    text = DOC.read_text()
    for name, group in syscalls.GROUPS.items():
        section = text.split(f"#### `{name}`", 1)[1].split("####", 1)[0]
        for member in group.members:
            assert f"`{member}`" in section or f"*{member}*" in section, (name, member)


def test_documented_explain_example_matches_the_cli() -> None:
    text = README.read_text()
    block = text.split("$ warden profile explain default ioctl 0 TIOCSTI\n", 1)[1]
    expected = [line.strip() for line in block.split("```", 1)[0].splitlines() if line.strip()]
    out = CliRunner().invoke(profile_group, ["explain", "default", "ioctl", "0", "TIOCSTI"])
    # The built-in's origin is wherever the package is installed; the README
    # shows it as the checkout's profiles/builtin/ (where the file is kept).
    got = [re.sub(r"[^\s\[]*/profiles/builtin/(\w[\w-]*\.toml)", r"profiles/builtin/\1",
                  line.strip())
           for line in out.stdout.splitlines()]
    assert got == expected


def test_groups_reference_only_known_names() -> None:
    for name, group in syscalls.GROUPS.items():
        assert name.startswith("@")
        for member in group.members:
            if member.startswith("@"):
                assert member in syscalls.GROUPS
            else:
                # known to libseccomp on some arch, or one of systemd's names
                # for calls libseccomp 2.5 has never heard of (documented in italics)
                assert syscalls.is_known(member) or member in _UNKNOWN_TO_LIBSECCOMP, member


_UNKNOWN_TO_LIBSECCOMP = {"sys_debug_setcontext", "rtas", "subpage_prot", "switch_endian",
                          "swapcontext", "spu_create", "spu_run", "set_tls", "sigreturn"}


def test_group_expansion_follows_nested_groups() -> None:
    members = dict(syscalls.expand("@system-service"))
    assert members["read"] == ("@system-service", "@basic-io")
    assert members["ioctl"] == ("@system-service",)
    assert "chown32" not in members  # not on x86_64
    assert syscalls.number("getppid") == 110 and syscalls.name_of(110) == "getppid"
    assert syscalls.suggest("opne") == "open" and syscalls.suggest("@netwrk-io") == "@network-io"


def test_systemd_groups_match_the_reference_members() -> None:
    """Spot checks against systemd's seccomp-util.c sets."""
    assert set(syscalls.GROUPS["@reboot"].members) == {"kexec_file_load", "kexec_load", "reboot"}
    assert set(syscalls.GROUPS["@keyring"].members) == {"add_key", "keyctl", "request_key"}
    assert set(syscalls.GROUPS["@swap"].members) == {"swapoff", "swapon"}
    assert {"mount", "umount2", "pivot_root", "chroot", "open_tree"} <= set(
        syscalls.GROUPS["@mount"].members)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AF_UNIX", socket.AF_UNIX), ("AF_INET", socket.AF_INET), ("AF_INET6", socket.AF_INET6),
        ("AF_NETLINK", socket.AF_NETLINK), ("AF_PACKET", socket.AF_PACKET),
        ("SOCK_STREAM", socket.SOCK_STREAM), ("SOCK_DGRAM", socket.SOCK_DGRAM),
        ("SOCK_RAW", socket.SOCK_RAW), ("SOCK_CLOEXEC", socket.SOCK_CLOEXEC),
        ("SOCK_NONBLOCK", socket.SOCK_NONBLOCK),
        ("TIOCSTI", termios.TIOCSTI), ("TCGETS", termios.TCGETS),
        ("TIOCGWINSZ", termios.TIOCGWINSZ), ("FIONREAD", termios.FIONREAD),
        ("TIOCSCTTY", termios.TIOCSCTTY), ("FIONBIO", termios.FIONBIO),
        ("O_CREAT", os.O_CREAT), ("O_TRUNC", os.O_TRUNC), ("O_CLOEXEC", os.O_CLOEXEC),
        ("O_DIRECTORY", os.O_DIRECTORY), ("O_NOFOLLOW", os.O_NOFOLLOW), ("O_PATH", os.O_PATH),
        ("O_TMPFILE", os.O_TMPFILE), ("O_APPEND", os.O_APPEND), ("O_NONBLOCK", os.O_NONBLOCK),
        ("PROT_READ", mmap.PROT_READ), ("PROT_WRITE", mmap.PROT_WRITE),
        ("PROT_EXEC", mmap.PROT_EXEC), ("MAP_SHARED", mmap.MAP_SHARED),
        ("MAP_PRIVATE", mmap.MAP_PRIVATE), ("MAP_ANONYMOUS", mmap.MAP_ANONYMOUS),
        ("F_GETFL", fcntl.F_GETFL), ("F_SETFL", fcntl.F_SETFL),
        ("F_DUPFD_CLOEXEC", fcntl.F_DUPFD_CLOEXEC), ("F_ADD_SEALS", fcntl.F_ADD_SEALS),
    ],
)
def test_constants_agree_with_python(name: str, value: int) -> None:
    assert CONSTANTS[name] == value


def test_clone_flags_agree_with_os_where_python_has_them() -> None:
    for name in ("CLONE_NEWNS", "CLONE_NEWUSER", "CLONE_NEWPID", "CLONE_NEWNET", "CLONE_NEWIPC",
                 "CLONE_NEWUTS", "CLONE_NEWCGROUP", "CLONE_VM", "CLONE_FS", "CLONE_FILES",
                 "CLONE_SIGHAND", "CLONE_THREAD", "CLONE_NEWTIME", "CLONE_SYSVSEM"):
        if hasattr(os, name):
            assert CONSTANTS[name] == getattr(os, name), name
    linux_values = {"CLONE_NEWUSER": 0x10000000, "CLONE_NEWNS": 0x20000, "CLONE_THREAD": 0x10000}
    for name, value in linux_values.items():
        assert CONSTANTS[name] == value


def test_parse_value() -> None:
    assert parse_value("CLONE_NEWNS|CLONE_NEWUSER") == 0x10020000
    assert parse_value(" 0x10 | 0o1 | 2 ") == 0x13
    assert parse_value("-1") == 2**64 - 1
    with pytest.raises(ConstantError, match=re.escape('unknown constant "AF_INTE" (did you mean '
                                                      '"AF_INET"?)')):
        parse_value("AF_INTE")
    with pytest.raises(ConstantError):
        parse_value("1||2")

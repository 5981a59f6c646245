"""Attacks on a writable owned bind: nothing the sandbox leaves there gains privilege.

On an idmapped bind (--bind-owned) what the sandbox creates belongs to the bound
directory's owner outside, often root; so a setuid bit it set there would be a
setuid-root program on the host. Each test has a tiny child program try one
way of leaving privilege behind, by the raw system call (no libc wrapper to
pick another), and then the host looks at the file itself: mode, owner,
xattrs. Most run under the test profile, whose filter allows everything: what
stands is the sandbox's guard filter and the kernel alone. Root and the
ordinary uid alike (as the ordinary uid the bind is the user's own directory,
which needs no idmap; the refusals are the same).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import struct
from typing import Any

import pytest

from tests.sandbox.sandbox_util import (
    MODE,
    PY,
    TEST_PROFILE,
    default_profile,
    filter_notifying,
    run,
    world_dir,
)
from warden.profiles import syscalls
from warden.profiles.model import Profile
from warden.supervisor.sandbox import Outcome

AT_FDCWD = -100
CLONE_NEWUSER = 0x10000000
# security.capability, revision 2, effective: CAP_SETUID (7) permitted. And revision 3,
# whose root id 0 would make it hold in the host's own user namespace.
CAP_V2 = struct.pack("<5I", 0x02000001, 1 << 7, 0, 0, 0)
CAP_V3 = struct.pack("<6I", 0x03000001, 1 << 7, 0, 0, 0, 0)
SETXATTRAT = {"x86_64": 463, "aarch64": 463}[os.uname().machine]  # the same on every arch

# The child: each entry (label, syscall name, arguments) made with raw syscall(2).
# An argument is an int, a str (a path or name: a C string), or {"fd": path} (an
# O_RDONLY fd of it), {"bytes": hex} (a buffer), {"zeros": n}, {"how": [flags, mode,
# resolve]} (openat2's struct open_how), {"xattr": hex} (setxattrat's struct
# xattr_args). Prints {label: "ok" | errno name}.
PROBE = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for label, nr, args, gives_fd in json.loads(sys.argv[1]):
    keep, fds, cargs = [], [], []
    for a in args:
        if isinstance(a, str):
            keep.append(ctypes.create_string_buffer(a.encode()))
            cargs.append(ctypes.cast(keep[-1], ctypes.c_void_p))
        elif isinstance(a, int):
            cargs.append(ctypes.c_long(a))
        elif "fd" in a:
            fds.append(os.open(a["fd"], os.O_RDONLY))
            cargs.append(ctypes.c_long(fds[-1]))
        elif "bytes" in a or "zeros" in a:
            data = bytes.fromhex(a["bytes"]) if "bytes" in a else bytes(a["zeros"])
            keep.append(ctypes.create_string_buffer(data, len(data)))
            cargs.append(ctypes.cast(keep[-1], ctypes.c_void_p))
        elif "how" in a:
            keep.append((ctypes.c_uint64 * 3)(*a["how"]))
            cargs.append(ctypes.cast(keep[-1], ctypes.c_void_p))
        else:
            value = bytes.fromhex(a["xattr"])
            keep.append(ctypes.create_string_buffer(value, len(value)))
            keep.append((ctypes.c_uint64 * 2)(ctypes.addressof(keep[-1]), len(value)))
            cargs.append(ctypes.cast(keep[-1], ctypes.c_void_p))
    r = libc.syscall(ctypes.c_long(nr), *cargs)
    out[label] = "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
    if r >= 0 and gives_fd:
        os.close(r)
    for fd in fds:
        os.close(fd)
print(json.dumps(out))
"""
GIVES_FD = ("open", "openat", "creat", "openat2", "io_uring_setup")


def _nr(name: str | int) -> int:
    nr = syscalls.number(name) if isinstance(name, str) else name
    assert nr is not None, name
    return nr


def probe(attempts: list[tuple[str, str | int, list[Any]]], profile: Profile = TEST_PROFILE,
          **kw: Any) -> dict[str, str]:
    calls = [(label, _nr(name), args, name in GIVES_FD) for label, name, args in attempts]
    r = run([PY, "-I", "-S", "-c", PROBE, json.dumps(calls)], profile, **kw)
    assert r.status.outcome is Outcome.OK, (r.status, r.err)
    got: dict[str, str] = json.loads(r.out)
    return got


def _file(d: str, name: str, mode: int = 0o755) -> str:
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(path, mode)
    return path


def _setuid_file(d: str, name: str = "suid") -> str:
    """A setuid program of the directory's owner (root as root), placed by the host."""
    path = os.path.join(d, name)
    shutil.copy("/bin/true", path)
    os.chmod(path, 0o6755)
    return path


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _absent(d: str, *names: str) -> list[str]:
    return [n for n in names if os.path.lexists(os.path.join(d, n))]


SETID = stat.S_ISUID | stat.S_ISGID


def test_no_set_id_mode_reaches_the_host() -> None:
    d = world_dir()
    for name in ("t_chmod", "t_fchmod", "t_fchmodat", "t_fchmodat2", "t_plain"):
        _file(d, name)
    o_create = os.O_CREAT | os.O_WRONLY
    got = probe([
        ("chmod u+s", "chmod", ["/w/t_chmod", 0o4755]),
        ("chmod g+s", "chmod", ["/w/t_chmod", 0o2755]),
        ("fchmod u+s", "fchmod", [{"fd": "/w/t_fchmod"}, 0o4755]),
        ("fchmodat g+s", "fchmodat", [AT_FDCWD, "/w/t_fchmodat", 0o2711]),
        ("fchmodat2 u+s", "fchmodat2", [AT_FDCWD, "/w/t_fchmodat2", 0o4700, 0]),
        ("fchmodat2 u+s, upper bits", "fchmodat2", [AT_FDCWD, "/w/t_fchmodat2",
                                                    (1 << 40) | 0o4700, 0]),
        ("chmod 0700 (control)", "chmod", ["/w/t_plain", 0o700]),
        ("open O_CREAT u+s", "open", ["/w/c_open", o_create, 0o4755]),
        ("openat O_CREAT g+s", "openat", [AT_FDCWD, "/w/c_openat", o_create, 0o2755]),
        ("openat O_TMPFILE u+s", "openat", [AT_FDCWD, "/w", os.O_TMPFILE | os.O_WRONLY,
                                            0o4755]),
        ("creat u+s", "creat", ["/w/c_creat", 0o4755]),
        ("openat2 O_CREAT u+s", "openat2", [AT_FDCWD, "/w/c_openat2",
                                            {"how": [o_create, 0o4755, 0]}, 24]),
        ("mkdir g+s", "mkdir", ["/w/d_mkdir", 0o2755]),
        ("mkdirat u+s", "mkdirat", [AT_FDCWD, "/w/d_mkdirat", 0o4755]),
        ("mknod regular u+s", "mknod", ["/w/n_mknod", stat.S_IFREG | 0o4755, 0]),
        ("mknodat regular g+s", "mknodat", [AT_FDCWD, "/w/n_mknodat",
                                            stat.S_IFREG | 0o2755, 0]),
        # Without O_CREAT the mode is not used: not refused.
        ("openat O_RDONLY, mode u+s (control)", "openat", [AT_FDCWD, "/w/t_plain",
                                                           os.O_RDONLY, 0o4755]),
        ("openat O_CREAT 0644 (control)", "openat", [AT_FDCWD, "/w/c_plain", o_create,
                                                     0o644]),
    ], owned_binds=[f"{d}:/w"])
    controls = {k: v for k, v in got.items() if k.endswith("(control)")}
    assert set(controls.values()) == {"ok"}, got
    refused = {k: v for k, v in got.items() if k not in controls}
    assert refused == {k: "ENOSYS" if k.startswith("openat2") else "EPERM" for k in refused}
    # From the host: modes unchanged, nothing created with the refused calls.
    for name in ("t_chmod", "t_fchmod", "t_fchmodat", "t_fchmodat2"):
        assert _mode(os.path.join(d, name)) == 0o755, name
    assert _mode(os.path.join(d, "t_plain")) == 0o700
    assert _absent(d, "c_open", "c_openat", "c_creat", "c_openat2", "d_mkdir", "d_mkdirat",
                   "n_mknod", "n_mknodat") == []
    assert os.listdir(d).count("c_plain") == 1 and not _mode(os.path.join(d, "c_plain")) & SETID
    assert {os.lstat(os.path.join(d, n)).st_uid for n in os.listdir(d)} == {os.lstat(d).st_uid}


def test_no_device_node_reaches_the_host() -> None:
    d = world_dir()
    got = probe([
        ("character device", "mknodat", [AT_FDCWD, "/w/chr", stat.S_IFCHR | 0o666,
                                         os.makedev(1, 3)]),
        # 0:0 is a whiteout, which the kernel lets anyone make: refused here all the same.
        ("whiteout", "mknodat", [AT_FDCWD, "/w/whiteout", stat.S_IFCHR | 0o600, 0]),
        ("block device", "mknod", ["/w/blk", stat.S_IFBLK | 0o660, os.makedev(7, 0)]),
        ("fifo (control)", "mknodat", [AT_FDCWD, "/w/fifo", stat.S_IFIFO | 0o644, 0]),
    ], owned_binds=[f"{d}:/w"])
    assert got == {"character device": "EPERM", "whiteout": "EPERM", "block device": "EPERM",
                   "fifo (control)": "ok"}
    assert _absent(d, "chr", "whiteout", "blk") == []
    assert stat.S_ISFIFO(os.lstat(os.path.join(d, "fifo")).st_mode)


def test_no_file_capability_reaches_the_host() -> None:
    """The filter cannot read an xattr's name; the kernel refuses security.capability to
    a process without CAP_SETFCAP, which nothing in the sandbox holds. A user xattr (the
    control) is written: the refusal is the kernel's, of that name alone."""
    d = world_dir()
    target = _file(d, "t_caps")
    cap = "security.capability"
    got = probe([
        ("setxattr v2", "setxattr", ["/w/t_caps", cap, {"bytes": CAP_V2.hex()}, len(CAP_V2), 0]),
        ("setxattr v3 rootid 0", "setxattr", ["/w/t_caps", cap, {"bytes": CAP_V3.hex()},
                                              len(CAP_V3), 0]),
        ("lsetxattr", "lsetxattr", ["/w/t_caps", cap, {"bytes": CAP_V2.hex()}, len(CAP_V2), 0]),
        ("fsetxattr", "fsetxattr", [{"fd": "/w/t_caps"}, cap, {"bytes": CAP_V2.hex()},
                                    len(CAP_V2), 0]),
        ("user xattr (control)", "setxattr", ["/w/t_caps", "user.note", {"bytes": b"hi".hex()},
                                              2, 0]),
    ], owned_binds=[f"{d}:/w"])
    assert got == {"setxattr v2": "EPERM", "setxattr v3 rootid 0": "EPERM", "lsetxattr": "EPERM",
                   "fsetxattr": "EPERM", "user xattr (control)": "ok"}
    with pytest.raises(OSError) as e:
        os.getxattr(target, cap)
    assert e.value.errno == errno.ENODATA
    assert os.getxattr(target, "user.note") == b"hi"


def test_setxattrat_is_refused_too() -> None:
    """setxattrat (Linux 6.13) takes its value in a struct; libseccomp 2.5 has no name for
    it, so only a profile that allows unknown calls lets it through: the kernel refuses."""
    d = world_dir()
    target = _file(d, "t_caps")
    got = probe([("setxattrat", SETXATTRAT, [AT_FDCWD, "/w/t_caps", 0, "security.capability",
                                             {"xattr": CAP_V2.hex()}, 16])],
                owned_binds=[f"{d}:/w"])
    release = tuple(int("".join(c for c in x if c.isdigit()) or 0)
                    for x in os.uname().release.split(".")[:2])
    assert got == {"setxattrat": "EPERM" if release >= (6, 13) else "ENOSYS"}
    with pytest.raises(OSError) as e:
        os.getxattr(target, "security.capability")
    assert e.value.errno == errno.ENODATA


def test_no_hard_link_to_a_setuid_program() -> None:
    """On the idmapped mount the sandbox owns the owner's setuid program, so the kernel's
    protected_hardlinks would let it link one (keeping it alive after the host replaced
    it): every hard link is refused in such a sandbox."""
    d = world_dir()
    suid = _setuid_file(d)
    got = probe([
        ("link", "link", ["/w/suid", "/w/l_link"]),
        ("linkat", "linkat", [AT_FDCWD, "/w/suid", AT_FDCWD, "/w/l_linkat", 0]),
        ("symlink (control)", "symlink", ["suid", "/w/l_sym"]),
    ], owned_binds=[f"{d}:/w"])
    assert got == {"link": "EPERM", "linkat": "EPERM", "symlink (control)": "ok"}
    assert os.lstat(suid).st_nlink == 1 and _absent(d, "l_link", "l_linkat") == []


def test_writing_a_setuid_program_of_the_owner_clears_its_bits() -> None:
    """The sandbox may rewrite the owner's files, a setuid one too: the kernel clears
    S_ISUID and S_ISGID on the write (the writer has no CAP_FSETID), so no content of the
    sandbox's ever carries them; setting them again is refused."""
    d = world_dir()
    suid = _setuid_file(d)
    r = run(["/bin/sh", "-c", "printf '#!/bin/sh\\nid\\n' > /w/suid; chmod 6755 /w/suid; "
             "echo $?"], owned_binds=[f"{d}:/w"])
    assert r.status.exit_code == 0 and r.out == "1\n", r
    assert _mode(suid) == 0o755 and os.lstat(suid).st_uid == os.lstat(d).st_uid
    with open(suid) as f:
        assert f.read() == "#!/bin/sh\nid\n"


def test_a_setgid_directory_hands_down_its_group_never_a_setgid_file() -> None:
    """In a setgid directory new files take the directory's group and new directories its
    setgid bit: the host's own policy for it, which the kernel applies. A file never gets
    S_ISGID there: not asked for (refused), not inherited. (A setgid directory of a group
    the bind does not map cannot even be written: see the next test.)"""
    d = world_dir()
    sg = os.path.join(d, "sg")
    os.mkdir(sg)
    os.chmod(sg, 0o2777)
    o_create = os.O_CREAT | os.O_WRONLY
    got = probe([
        ("file 0755", "openat", [AT_FDCWD, "/w/sg/f", o_create, 0o755]),
        ("file g+s", "openat", [AT_FDCWD, "/w/sg/g", o_create, 0o2755]),
        ("dir", "mkdirat", [AT_FDCWD, "/w/sg/sub", 0o755]),
        ("file g+s in the inherited dir", "openat", [AT_FDCWD, "/w/sg/sub/h", o_create,
                                                     0o2755]),
        ("chmod g+s", "chmod", ["/w/sg/f", 0o2755]),
    ], owned_binds=[f"{d}:/w"])
    assert got == {"file 0755": "ok", "file g+s": "EPERM", "dir": "ok",
                   "file g+s in the inherited dir": "EPERM", "chmod g+s": "EPERM"}
    group = os.lstat(sg).st_gid
    f, sub = os.path.join(sg, "f"), os.path.join(sg, "sub")
    assert not _mode(f) & SETID and os.lstat(f).st_gid == group
    assert _mode(sub) & stat.S_ISGID and os.lstat(sub).st_gid == group
    assert _absent(d, "sg/g", "sg/sub/h") == []


def test_a_directory_of_an_id_the_bind_does_not_map_stays_read_only() -> None:
    """The idmap maps the bound directory's owner and group alone. The kernel refuses to
    write an inode whose owner or group the mount cannot map (it could not write the ids
    back), even a world-writable setgid directory of another group: nothing is made
    there, nothing inherits that group."""
    if MODE != "root":
        pytest.skip("needs root to make a directory of another group")
    d = world_dir()
    other = os.path.join(d, "other")
    os.mkdir(other)
    os.chown(other, os.lstat(d).st_uid, 4343)
    os.chmod(other, 0o2777)
    got = probe([("file", "openat", [AT_FDCWD, "/w/other/f", os.O_CREAT | os.O_WRONLY, 0o644]),
                 ("dir", "mkdirat", [AT_FDCWD, "/w/other/sub", 0o755])],
                owned_binds=[f"{d}:/w"])
    assert got == {"file": "EACCES", "dir": "EACCES"}
    assert os.listdir(other) == []


def test_io_uring_and_nested_user_namespaces_are_refused() -> None:
    """io_uring's operations (openat with a mode, linkat, setxattr) never pass seccomp:
    refused. A nested user namespace would hold CAP_FSETID and CAP_SETFCAP over the
    owner's files: the sandbox's own user namespace admits none (the kernel: ENOSPC)."""
    d = world_dir()
    got = probe([("io_uring_setup", "io_uring_setup", [4, {"zeros": 120}]),
                 ("unshare user", "unshare", [CLONE_NEWUSER])], owned_binds=[f"{d}:/w"])
    assert got == {"io_uring_setup": "EPERM", "unshare user": "ENOSPC"}


def test_the_guard_is_there_only_with_a_writable_owned_bind() -> None:
    """The control: in the sandbox's own /tmp, where the guard is not needed, the same
    calls work without a writable owned bind; with one they are refused there too
    (seccomp sees no path)."""
    d = world_dir()
    attempts: list[tuple[str, str | int, list[Any]]] = [
        ("create", "openat", [AT_FDCWD, "/tmp/f", os.O_CREAT | os.O_WRONLY, 0o644]),
        ("chmod u+s", "chmod", ["/tmp/f", 0o4755]),
        ("link", "link", ["/tmp/f", "/tmp/g"]),
        ("openat2", "openat2", [AT_FDCWD, "/tmp/f", {"how": [os.O_RDONLY, 0, 0]}, 24]),
    ]
    assert probe(attempts, binds=[f"{d}:/w"]) == dict.fromkeys(
        ("create", "chmod u+s", "link", "openat2"), "ok")
    assert probe(attempts, owned_ro_binds=[f"{d}:/w"])["chmod u+s"] == "ok"
    assert probe(attempts, owned_binds=[f"{d}:/w"]) == {
        "create": "ok", "chmod u+s": "EPERM", "link": "EPERM", "openat2": "ENOSYS"}


def test_under_default_the_same_refusals() -> None:
    d = world_dir()
    _file(d, "t")
    suid = _setuid_file(d)
    got = probe([
        ("chmod u+s", "chmod", ["/w/t", 0o4755]),
        ("fchmodat2 g+s", "fchmodat2", [AT_FDCWD, "/w/t", 0o2755, 0]),
        ("openat O_CREAT u+s", "openat", [AT_FDCWD, "/w/c", os.O_CREAT | os.O_WRONLY, 0o4755]),
        ("mknodat chr", "mknodat", [AT_FDCWD, "/w/n", stat.S_IFCHR | 0o666, os.makedev(1, 3)]),
        ("linkat", "linkat", [AT_FDCWD, "/w/suid", AT_FDCWD, "/w/l", 0]),
        ("setxattr caps", "setxattr", ["/w/t", "security.capability", {"bytes": CAP_V2.hex()},
                                       len(CAP_V2), 0]),
    ], default_profile(), bpf=None, owned_binds=[f"{d}:/w"])
    assert got == dict.fromkeys(got, "EPERM") and len(got) == 6
    assert _mode(os.path.join(d, "t")) == 0o755 and _absent(d, "c", "n", "l") == []
    assert os.lstat(suid).st_nlink == 1


def test_the_profiles_kills_still_kill_and_are_reported() -> None:
    """The guard is stacked under the profile's filter: a call the profile kills is
    reported through its listener as before; the guard's refusal stands over the
    profile's verdict for what it refuses (errno outranks user-notify)."""
    d = world_dir()
    _file(d, "t")
    bpf = filter_notifying("chmod")
    r = run([PY, "-I", "-S", "-c", "import os\ntry:\n    os.chmod('/w/t', 0o4755)\n"
             "except OSError as e:\n    print(e.errno, flush=True)\nos.chmod('/w/t', 0o700)"],
            bpf=bpf, owned_binds=[f"{d}:/w"])
    assert r.out == f"{errno.EPERM}\n", r
    assert r.status.outcome is Outcome.SECCOMP_VIOLATION, r.status
    assert r.status.violation is not None and r.status.violation.syscall == "chmod"
    assert _mode(os.path.join(d, "t")) == 0o755
    # And under default, with the guard: a call default kills is reported by name.
    r = run([PY, "-I", "-S", "-c", "import ctypes; ctypes.CDLL(None).syscall(279, 0, 0)"],
            default_profile(), bpf=None, owned_binds=[f"{d}:/w"])
    assert r.status.outcome is Outcome.SECCOMP_VIOLATION, r.status
    assert r.status.violation is not None and r.status.violation.syscall == "move_pages"

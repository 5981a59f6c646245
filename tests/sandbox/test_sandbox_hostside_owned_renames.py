"""A writable owned bind: a set-id program already there cannot be moved into place.

On an idmapped bind (--bind-owned) the sandbox acts on the owner's files as the owner
(root, as root). The guard filter stops it making a set-id bit, a device node or a
hard link, and the kernel clears the bits of a set-id file it writes; but rename(2)
keeps a file's mode, and a filter cannot see the mode of the file it renames. So a
setuid-root program that was already in the tree (a copy of a helper, a build
output) could be renamed onto the name of a script the host runs later, or the
directory holding it renamed onto one the host trusts: privilege placed by the
sandbox, on the host. warden finds such programs (set-uid, set-gid with group
execute, a file capability) before the sandbox starts and binds each, and every
directory on its way, onto itself in the sandbox: a mount point cannot be renamed,
replaced or unlinked (EBUSY), and a rename out of it crosses mounts (EXDEV).

Each test leaves the program in a fresh directory, lets a child try, and then the
host looks at the tree itself: no privileged file anywhere but where it was.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct

import pytest

from tests.sandbox.sandbox_util import MODE, PY, run, world_dir
from warden.profiles import syscalls
from warden.supervisor.sandbox import Outcome

SETID = stat.S_ISUID | stat.S_ISGID
RENAME_EXCHANGE = 2
AT_FDCWD = -100
# security.capability, revision 2: CAP_SETUID (7) permitted and effective.
CAP_V2 = struct.pack("<5I", 0x02000001, 1 << 7, 0, 0, 0)

# The child: each (label, old, new, flags) tried with renameat2(2) by its number;
# prints {label: "ok" | errno name}.
TRY = r"""
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
nr, tries = json.loads(sys.argv[1])
out = {}
for label, old, new, flags in tries:
    r = libc.syscall(ctypes.c_long(nr), ctypes.c_long(-100), old.encode(), ctypes.c_long(-100),
                     new.encode(), ctypes.c_uint(flags))
    out[label] = "ok" if r == 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps(out))
"""


def _tree() -> str:
    """bin/ with a script the host runs, tools/helper a setuid program of the owner."""
    d = world_dir()
    for sub in ("bin", "tools", "other"):
        os.mkdir(os.path.join(d, sub))
        os.chmod(os.path.join(d, sub), 0o755)
    with open(os.path.join(d, "bin", "backup"), "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(os.path.join(d, "bin", "backup"), 0o755)
    with open(os.path.join(d, "other", "plain"), "w") as f:
        f.write("data\n")
    helper = os.path.join(d, "tools", "helper")
    shutil.copy("/bin/true", helper)
    os.chmod(helper, 0o4755)
    return d


def _try(d: str, tries: list[tuple[str, str, str, int]]) -> dict[str, str]:
    nr = syscalls.number("renameat2")
    assert nr is not None
    r = run([PY, "-I", "-S", "-c", TRY, json.dumps([nr, tries])], owned_binds=[f"{d}:/w"])
    assert r.status.outcome is Outcome.OK, (r.status, r.err)
    got: dict[str, str] = json.loads(r.out)
    return got


def _privileged_files(d: str) -> dict[str, int]:
    """Every file under `d` with a set-id bit or a file capability: {relative path: mode}."""
    found = {}
    for root, _dirs, files in os.walk(d):
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            caps = False
            try:
                os.getxattr(path, "security.capability", follow_symlinks=False)
                caps = True
            except OSError:
                pass
            if st.st_mode & SETID or caps:
                found[os.path.relpath(path, d)] = stat.S_IMODE(st.st_mode)
    return found


def test_a_setuid_program_cannot_be_renamed_onto_a_script_the_host_runs() -> None:
    d = _tree()
    got = _try(d, [
        ("onto the script", "/w/tools/helper", "/w/bin/backup", 0),
        ("to a new name", "/w/tools/helper", "/w/bin/newtool", 0),
        ("exchanged with the script", "/w/tools/helper", "/w/bin/backup", RENAME_EXCHANGE),
        ("its directory onto bin", "/w/tools", "/w/bin", 0),
        ("its directory to a new name", "/w/tools", "/w/sbin", 0),
        ("a plain file (control)", "/w/other/plain", "/w/bin/plain", 0),
        ("a plain directory (control)", "/w/other", "/w/other2", 0),
    ])
    assert got["a plain file (control)"] == "ok" and got["a plain directory (control)"] == "ok"
    refused = {k: v for k, v in got.items() if "control" not in k}
    assert all(v in ("EBUSY", "EXDEV") for v in refused.values()), got
    assert _privileged_files(d) == {"tools/helper": 0o4755}
    with open(os.path.join(d, "bin", "backup")) as f:
        assert f.read() == "#!/bin/sh\nexit 0\n"


def test_a_setgid_program_deep_in_the_tree_stays_where_it_was() -> None:
    d = _tree()
    deep = os.path.join(d, "a", "b", "c")
    os.makedirs(deep)
    for p in (os.path.join(d, "a"), os.path.join(d, "a", "b"), deep):
        os.chmod(p, 0o755)
    prog = os.path.join(deep, "sg")
    shutil.copy("/bin/true", prog)
    os.chmod(prog, 0o2755)
    got = _try(d, [
        ("the program", "/w/a/b/c/sg", "/w/bin/sg", 0),
        ("c", "/w/a/b/c", "/w/bin/c", 0),
        ("b", "/w/a/b", "/w/bin/b", 0),
        ("a onto bin", "/w/a", "/w/bin", 0),
        ("a", "/w/a", "/w/z", 0),
    ])
    assert all(v in ("EBUSY", "EXDEV") for v in got.values()), got
    assert _privileged_files(d) == {"a/b/c/sg": 0o2755, "tools/helper": 0o4755}


def test_a_program_with_a_file_capability_stays_where_it_was() -> None:
    if MODE != "root":
        pytest.skip("needs root to give a file a capability (CAP_SETFCAP)")
    d = _tree()
    prog = os.path.join(d, "other", "capped")
    shutil.copy("/bin/true", prog)
    os.setxattr(prog, "security.capability", CAP_V2)
    got = _try(d, [("the program", "/w/other/capped", "/w/bin/backup", 0),
                   ("its directory", "/w/other", "/w/bin", 0)])
    assert all(v in ("EBUSY", "EXDEV") for v in got.values()), got
    assert set(_privileged_files(d)) == {"other/capped", "tools/helper"}


def test_the_sandbox_still_uses_the_tree_as_before() -> None:
    """Pinned is not read-only: the program can be read and rewritten (the kernel clears
    its bits on the write), and everything else moves freely."""
    d = _tree()
    r = run(["/bin/sh", "-c", "cat /w/tools/helper > /dev/null && echo read; "
             "printf x > /w/tools/helper && echo written; mv /w/bin/backup /w/bin/b2 && "
             "echo moved; mkdir /w/tools/new && echo made"], owned_binds=[f"{d}:/w"])
    assert r.status.outcome is Outcome.OK and r.out.split() == ["read", "written", "moved",
                                                                 "made"], r
    assert _privileged_files(d) == {}
    assert stat.S_IMODE(os.lstat(os.path.join(d, "tools", "helper")).st_mode) == 0o755

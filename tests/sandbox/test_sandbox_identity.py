"""No privilege: unprivileged ids inside and out, no capability, no_new_privs, setuid inert."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.sandbox.sandbox_util import MODE, PY, collect, py, run, start, world_dir
from warden.supervisor.sandbox import ids
from warden.supervisor.sandbox.userns import INNER_ID

STATUS_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")


def _status_fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in STATUS_FIELDS:
            out[k] = v.strip()
    return out


def test_all_capability_sets_empty_and_no_new_privs() -> None:
    r = py("print(open('/proc/self/status').read())")
    f = _status_fields(r.out)
    for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(f[k], 16) == 0, (k, f[k])
    assert f["NoNewPrivs"] == "1"
    assert f["Seccomp"] == "2"


def test_ids_inside_are_unprivileged_and_root_is_unmapped() -> None:
    r = py("import os, json; print(json.dumps([os.getresuid(), os.getresgid(), os.getgroups(), "
           "open('/proc/self/uid_map').read().split()]))")
    uids, gids, groups, uid_map = r.json()
    assert uids == [INNER_ID] * 3 and gids == [INNER_ID] * 3
    assert 0 not in groups
    assert uid_map[0] == str(INNER_ID) and uid_map[2] == "1"
    if MODE == "root":  # an id of its own from the range (ids.py)
        start, count = ids.DEFAULT_RANGE
        assert start <= int(uid_map[1]) < start + count
    elif ids.subordinate_ids() is None:
        assert uid_map[1] == str(os.getuid())


def test_outer_uid_of_every_sandbox_process_is_the_dedicated_or_own_id() -> None:
    box, out, err = start([PY, "-I", "-S", "-c", "import time; time.sleep(30)"])
    try:
        init = box.pid
        children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
        pids = [init, *map(int, children)]
        expected = box.outer_ids[0]
        assert MODE == "root" or ids.subordinate_ids() is not None or expected == os.getuid()
        for pid in pids:
            uid_line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                            if ln.startswith("Uid:"))
            assert set(map(int, uid_line.split()[1:])) == {expected}, (pid, uid_line)
            assert expected != 0
        # The init holds a copy of the supervisor's memory: it is not dumpable, so its
        # /proc files belong to root, not to the id the workload shares with it.
        assert os.stat(f"/proc/{init}/mem").st_uid == 0
        assert Path(f"/proc/{init}/comm").read_text() == "warden-init\n"
    finally:
        box.kill()
        collect(box, out, err)


def test_outer_uid_is_configurable_as_root() -> None:
    if MODE != "root":
        pytest.skip("needs root: an ordinary user can map only its own uid")
    r = py("print(open('/proc/self/uid_map').read())", outer_uid=2_000_111, outer_gid=2_000_111)
    assert r.out.split() == [str(INNER_ID), "2000111", "1"]


HOST_SETUID = ("/usr/bin/mount", "/usr/bin/su", "/usr/bin/passwd", "/usr/bin/newgrp",
               "/usr/bin/chfn")


def _auxv(text: str) -> dict[str, str]:
    """glibc's LD_SHOW_AUXV dump: the kernel's own account of the exec (AT_SECURE is set
    exactly when the exec changed the ids or gained capabilities)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.startswith("AT_"):
            out[key] = value.strip()
    return out


def _setuid_root_program() -> str:
    found = next((p for p in HOST_SETUID if os.path.exists(p)
                  and os.stat(p).st_mode & stat.S_ISUID and os.stat(p).st_uid == 0), None)
    assert found is not None, "no setuid-root program on this host to attack with"
    return found


def test_a_setuid_root_program_of_the_host_gains_nothing_inside() -> None:
    """Exec a real setuid-root binary of the host inside the sandbox and ask the kernel.

    Control first: outside, as an ordinary uid, the same exec IS a secure exec, so glibc
    drops LD_SHOW_AUXV and prints nothing: the probe can tell a privileged exec apart."""
    import subprocess

    prog = _setuid_root_program()
    drop = [] if os.geteuid() != 0 else ["setpriv", "--reuid=4242", "--regid=4242",
                                          "--clear-groups"]
    control = subprocess.run([*drop, "/usr/bin/env", "LD_SHOW_AUXV=1", prog, "--version"],
                             capture_output=True, text=True, timeout=60)
    assert "AT_SECURE" not in control.stdout, control.stdout  # secure exec outside
    r = run([prog, "--version"], env=["LD_SHOW_AUXV=1"])
    aux = _auxv(r.out)
    assert aux.get("AT_SECURE") == "0", r
    assert (aux["AT_UID"], aux["AT_EUID"], aux["AT_GID"], aux["AT_EGID"]) == \
        (str(INNER_ID),) * 4, aux


def test_a_setuid_root_copy_in_a_writable_bind_gains_nothing() -> None:
    if MODE != "root":
        pytest.skip("needs root to make a setuid-root file")
    import shutil

    d = world_dir()
    target = os.path.join(d, "id")
    shutil.copy("/usr/bin/id", target)
    os.chown(target, 0, 0)
    os.chmod(target, 0o4755)
    try:
        # Even a writable bind: nosuid on every bind, no_new_privs on the workload.
        r = run(["/opt/bin/id", "-u"], binds=[f"{d}:/opt/bin"], env=["LD_SHOW_AUXV=1"])
        aux = _auxv(r.out)
        assert (aux.get("AT_SECURE"), aux.get("AT_EUID")) == ("0", str(INNER_ID)), r
        assert r.out.strip().splitlines()[-1] == str(INNER_ID), r
    finally:
        os.unlink(target)  # a setuid-root file is never left behind

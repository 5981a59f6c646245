"""No privilege: unprivileged ids inside and out, no capability, no_new_privs, setuid inert."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sandbox_util import MODE, PY, TEST_PROFILE, collect, py, start

from supervisor.sandbox import ids
from supervisor.sandbox.spec import INNER_ID

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
        return
    r = py("print(open('/proc/self/uid_map').read())", outer_uid=2_000_111, outer_gid=2_000_111)
    assert r.out.split() == [str(INNER_ID), "2000111", "1"]


def test_setuid_binaries_are_inert() -> None:
    setuid = next((p for p in ("/usr/bin/su", "/usr/bin/passwd", "/usr/bin/mount",
                               "/usr/bin/newgrp") if os.path.exists(p)
                   and os.stat(p).st_mode & stat.S_ISUID), None)
    assert setuid is not None, "no setuid binary on this host to test with"
    # A copy of id with the setuid bit would not help either: nosuid + no_new_privs.
    r = py(f"import os; v = os.statvfs({setuid!r}); "
           f"print(bool(os.stat({setuid!r}).st_mode & 0o4000), bool(v.f_flag & os.ST_NOSUID))")
    assert r.out.split() == ["True", "True"]
    r2 = py("import subprocess, sys; r = subprocess.run(['/usr/bin/env', 'python3', '-I', '-S', "
            "'-c', 'import os; print(os.geteuid())']); sys.exit(r.returncode)")
    assert r2.out.strip() == str(INNER_ID)
    assert TEST_PROFILE.name == "test"


def test_a_setuid_root_program_runs_with_the_sandbox_uid() -> None:
    if MODE != "root":
        pytest.skip("making a setuid-root file needs root")
    import shutil

    from sandbox_util import run, world_dir

    d = world_dir()
    target = os.path.join(d, "id")
    shutil.copy("/usr/bin/id", target)
    os.chown(target, 0, 0)
    os.chmod(target, 0o4755)
    r = run(["/opt/bin/id", "-u"], binds=[f"{d}:/opt/bin"])  # even a writable bind: nosuid
    assert r.out.strip() == str(INNER_ID), r

"""cgroup v2: the sandbox's init is born in its cgroup (clone3 CLONE_INTO_CGROUP), or moved.

This machine's cgroup2 hierarchy (mounted beside the v1 ones) has no memory or
pids controller, so `limits.choose` never picks cgroup v2 here. These tests
therefore hand spawn() a CgroupV2 limiter that skips the limit files and keeps
everything else: the directory, its O_PATH descriptor, the clone3 into it, the
fallback to a move, the removal. What they check is where the kernel puts the
sandbox's processes, read from the kernel (/proc/PID/cgroup, cgroup.procs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.sandbox.sandbox_util import MODE, PY, WORKTREE, collect, py, start, supervisor_env
from warden.supervisor.sandbox import limits

pytestmark = pytest.mark.skipif(MODE != "root", reason="needs root: the tests create cgroup v2 "
                                "directories, which only root may do on this machine")


def _v2_root() -> str:
    """The cgroup2 directory this process is in (the cgroup2 mount plus our path)."""
    with open("/proc/self/mountinfo") as f:
        mount = next((line.split(" - ")[0].split()[4] for line in f
                      if line.split(" - ")[1].split()[0] == "cgroup2"), None)
    if mount is None:
        pytest.fail("no cgroup2 hierarchy is mounted (expected beside the v1 ones)")
    return os.path.normpath(mount + _cgroup_of(os.getpid()))


class BareV2(limits.CgroupV2):
    """cgroup v2 without the limit files (no controllers in this hierarchy)."""

    def _limit(self) -> None:
        pass


@pytest.fixture
def v2_parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    parent = os.path.join(_v2_root(), f"warden-test-{os.getpid()}-{os.urandom(3).hex()}")
    os.mkdir(parent)
    monkeypatch.setattr(limits, "choose", lambda spec: BareV2(spec, parent))
    try:
        yield parent
    finally:
        for name in os.listdir(parent):
            if name.startswith("warden-"):
                limits._rmdir(os.path.join(parent, name))
        limits._rmdir(parent)


def _cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return next(line.partition("::")[2].strip() for line in f if line.startswith("0::"))


def _members(d: str) -> set[int]:
    with open(os.path.join(d, "cgroup.procs")) as f:
        return {int(x) for x in f.read().split()}


def _sandboxes(parent: str) -> list[str]:
    return sorted(os.path.join(parent, n) for n in os.listdir(parent) if n.startswith("warden-"))


WAIT_AND_REPORT = ("import os, sys; sys.stdin.read(); "
                   "print(open('/proc/self/cgroup').read().split('0::')[1].strip(), "
                   "sorted(int(x) for x in os.listdir('/proc/self/fd')))")


def test_the_init_and_workload_are_born_in_the_sandbox_cgroup(v2_parent: str) -> None:
    r, w = os.pipe()
    box, out, err = start([PY, "-I", "-S", "-c", WAIT_AND_REPORT], stdin=r)
    os.close(r)
    try:
        assert box.cgroup_entry == "clone_into_cgroup"
        [mine] = _sandboxes(v2_parent)
        members = _members(mine)
        assert box.pid in members and len(members) == 2  # the init and its workload
        root = _v2_root()
        assert _cgroup_of(box.pid) == "/" + os.path.relpath(mine, _cgroup_mount(root))
    finally:
        os.close(w)
    res = collect(box, out, err)
    assert res.status.outcome.value == "ok", res.status
    seen_cgroup, fds = res.out.split(" ", 1)
    assert seen_cgroup == "/"  # its own cgroup namespace: no host path
    # The cgroup's descriptor (for clone3) stayed in the parent: stdio, the channel (3)
    # and listdir's own (4), as in every sandbox.
    assert fds.strip() == "[0, 1, 2, 3, 4]"
    assert _sandboxes(v2_parent) == []  # removed with the sandbox
    assert res.status.limits_mechanism == "cgroup-v2"


def _cgroup_mount(path: str) -> str:
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def test_a_refused_clone3_falls_back_to_moving_the_init(
        v2_parent: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A descriptor of a directory that is no cgroup: clone3 refuses it (EBADF), and
    # spawn() clones as before and moves the init.
    not_a_cgroup = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    monkeypatch.setattr(BareV2, "clone_into_fd", lambda self: not_a_cgroup)
    try:
        r, w = os.pipe()
        box, out, err = start([PY, "-I", "-S", "-c", WAIT_AND_REPORT], stdin=r)
        os.close(r)
        try:
            assert box.cgroup_entry == "migration"
            [mine] = _sandboxes(v2_parent)
            assert box.pid in _members(mine)
        finally:
            os.close(w)
        res = collect(box, out, err)
        assert res.status.outcome.value == "ok", res.status
    finally:
        os.close(not_a_cgroup)


def test_two_sandboxes_never_share_a_cgroup(v2_parent: str) -> None:
    """Each sandbox gets a fresh directory, born into by its own init only; none sees
    or can name the other's (its cgroup namespace is rooted at its own)."""
    pipes = [os.pipe() for _ in range(2)]
    boxes = [start([PY, "-I", "-S", "-c", WAIT_AND_REPORT], stdin=r) for r, _w in pipes]
    for r, _w in pipes:
        os.close(r)
    try:
        dirs = _sandboxes(v2_parent)
        assert len(dirs) == 2
        by_dir = [_members(d) for d in dirs]
        assert not (by_dir[0] & by_dir[1])
        for box, _o, _e in boxes:  # each init is in exactly one of them, with its workload
            assert [len(m) for m in by_dir if box.pid in m] == [2]
    finally:
        for _r, w in pipes:
            os.close(w)
    for box, out, err in boxes:
        res = collect(box, out, err)
        assert res.status.outcome.value == "ok", res.status
        assert res.out.split(" ", 1)[0] == "/"
    assert _sandboxes(v2_parent) == []


def test_a_sandbox_cannot_move_itself_or_reach_the_cgroup_tree(v2_parent: str) -> None:
    mine = os.path.relpath(v2_parent, _cgroup_mount(v2_parent))
    code = ("import os, json\n"
            "out = {}\n"
            f"for p in ('/sys/fs/cgroup', '/sys/fs/cgroup/unified/{mine}'):\n"
            "    out[p] = os.path.exists(p)\n"
            "print(json.dumps(out))")
    r = py(code)
    assert r.status.outcome.value == "ok", r.status
    assert set(r.json().values()) == {False}


KILLED_SUPERVISOR = """
import os, sys
sys.path[:0] = [{tests!r}]
from tests.sandbox import test_sandbox_clone_into_cgroup as t
from tests.sandbox.sandbox_util import start
from warden.supervisor.sandbox import limits
limits.choose = lambda spec: t.BareV2(spec, {parent!r})
r, w = os.pipe()
box, out, err = start(['/bin/sleep', '600'], stdin=r)
print(box.cgroup_entry, box.pid, flush=True)
sys.stdin.read()
"""


def test_nothing_in_the_cgroup_survives_the_supervisor_sigkill(v2_parent: str) -> None:
    code = KILLED_SUPERVISOR.format(tests=WORKTREE, parent=v2_parent)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=supervisor_env())
    assert proc.stdout is not None
    entry, _pid = proc.stdout.readline().split()
    assert entry == b"clone_into_cgroup"
    [mine] = _sandboxes(v2_parent)
    assert len(_members(mine)) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while _members(mine) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _members(mine) == set()
    # The dead supervisor could not remove it; the next one's sweep does (its name
    # carries the dead pid).
    limits._swept.discard(v2_parent)
    limits.sweep(v2_parent)
    assert _sandboxes(v2_parent) == []

"""Fork and memory bombs are stopped by the limits, --timeout kills, the host stays responsive."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.sandbox_util import MODE, collect, py, start

FORK_BOMB = """
import os, json, time
n = 0
err = None
while n < 10000:
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    n += 1
print(json.dumps([n, err]))
"""

MEMORY_BOMB = """
import json, sys
held = []
try:
    while len(held) < 256:
        held.append(bytearray(16 << 20))
        for i in range(0, 16 << 20, 4096):
            held[-1][i] = 1
except MemoryError:
    print(json.dumps(['MemoryError', len(held) * 16]))
    sys.exit(3)
print(json.dumps(['allocated', len(held) * 16]))
"""


def _host_responsive() -> None:
    r = subprocess.run(["/bin/sh", "-c", "echo alive"], capture_output=True, timeout=10)
    assert r.stdout == b"alive\n"


def test_fork_bomb_hits_the_process_limit() -> None:
    r = py(FORK_BOMB, max_procs=16)
    _host_responsive()
    forked, err = r.json()
    assert err == 11  # EAGAIN
    assert 8 <= forked < 16  # the limit is this sandbox's own, not shared with the host
    assert r.status.outcome.value == "ok"
    assert r.status.limits_mechanism in ("cgroup-v2", "cgroup-v1", "rlimit")


def test_memory_bomb_is_stopped_at_the_memory_limit() -> None:
    r = py(MEMORY_BOMB, memory=96 << 20, memory_rlimit_only=True)
    _host_responsive()
    st = r.status
    if st.limits_mechanism.startswith("cgroup"):
        assert st.outcome.value == "out_of_memory", st
        assert st.exit_code == 137
        assert st.peak_memory_bytes is not None and st.peak_memory_bytes <= 96 << 20
    else:
        what, mib = r.json()
        assert (what, st.outcome.value, st.returncode) == ("MemoryError", "exited", 3)
        assert mib < 96


def test_timeout_kills_the_whole_sandbox() -> None:
    r = py("import os, time\nif os.fork() == 0:\n    time.sleep(60)\ntime.sleep(60)",
           timeout=0.5)
    st = r.status
    assert st.outcome.value == "timeout"
    assert st.exit_code == 137
    assert st.reason == "wall-clock timeout of 0.5s"
    assert st.wall_time >= 0.5  # not before its time (how soon after is no test's business)


def test_cpu_time_limit() -> None:
    r = py("while True: pass", cpu_time=1)
    st = r.status
    assert st.outcome.value == "signaled", st
    assert st.signal in (24, 9), st  # SIGXCPU at the soft limit, SIGKILL at the hard one
    assert 0.5 <= st.cpu_time < 30, st  # rusage lags the scheduler's own count a little


def _host_view_of_limits(**limits: Any) -> tuple[str, str, str]:
    """(mechanism, the workload's /proc/PID/cgroup, its /proc/PID/limits), read from here."""
    box, out, err = start(["/bin/sleep", "60"], **limits)
    try:
        init = box.pid
        workload = int(Path(f"/proc/{init}/task/{init}/children").read_text().split()[0])
        return (box._limiter.mechanism, Path(f"/proc/{workload}/cgroup").read_text(),
                Path(f"/proc/{workload}/limits").read_text())
    finally:
        box.kill()
        collect(box, out, err)


def test_the_status_says_which_mechanism_held_the_limits(monkeypatch: pytest.MonkeyPatch) \
        -> None:
    """The mechanism the status names is the one the kernel shows in force."""
    mechanism, cgroups, rlimits = _host_view_of_limits(max_procs=33)
    assert py("pass", max_procs=33).status.limits_mechanism == mechanism
    nproc = next(ln for ln in rlimits.splitlines() if ln.startswith("Max processes")).split()
    if mechanism == "cgroup-v1":
        pids = next(ln for ln in cgroups.splitlines() if ":pids:" in ln)
        assert "/warden-" in pids, cgroups
    elif mechanism == "cgroup-v2":
        assert "/warden-" in next(ln for ln in cgroups.splitlines() if ln.startswith("0::"))
    else:
        assert mechanism == "rlimit"
        assert nproc[2:4] == ["33", "33"], nproc
    if MODE == "root" and os.path.isdir("/sys/fs/cgroup/pids") \
            and not os.path.isdir("/sys/fs/cgroup/cgroup.controllers"):
        assert mechanism == "cgroup-v1"  # this machine: root has the v1 hierarchy
    monkeypatch.setenv("WARDEN_CGROUP", "none")
    mechanism, cgroups, rlimits = _host_view_of_limits(max_procs=33)
    assert mechanism == "rlimit"
    assert "/warden-" not in cgroups
    nproc = next(ln for ln in rlimits.splitlines() if ln.startswith("Max processes")).split()
    assert nproc[2:4] == ["33", "33"], nproc


def test_cgroups_left_by_a_killed_supervisor_are_swept() -> None:
    from warden.supervisor.sandbox import limits

    if not py("pass").status.limits_mechanism.startswith("cgroup"):
        pytest.skip("needs root: no cgroup in use here (cgroup v1 is root's, and no v2 "
                    "subtree is delegated to this uid)")
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)  # a pid that no longer runs, like a SIGKILLed supervisor's
    parents = [d for d in limits._swept if os.path.isdir(d)]
    stale = [os.path.join(d, f"warden-{gone}-0-deadbeef") for d in parents]
    for d in stale:
        os.mkdir(d)
    limits._swept.clear()
    py("pass")
    assert [d for d in stale if os.path.exists(d)] == []

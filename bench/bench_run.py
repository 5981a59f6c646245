"""Spawn-to-exit of /bin/true: `warden run` and the API beside bwrap, subprocess and python3.

Run with the venv's interpreter (warden installed from the wheel, as users get
it; scripts/setup does that):  .venv/bin/python bench/bench_run.py [--runs N]

Every row is measured in this one run, interleaved round by round so that
load from other processes hits all rows alike. Goals (issue 3):
`warden run` <= 2x `python3 -c pass`; the API path <= bwrap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from reference_tools import bwrap_true_argv  # noqa: E402


def _env(root: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of one row: the installed package (root None) or an older
    checkout of the old layout on PYTHONPATH (a --before row)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if root is not None:
        env["PYTHONPATH"] = root
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def _compile_bytecode(root: str) -> None:
    # With PYTHONDONTWRITEBYTECODE set (CI), every start would compile the old
    # checkout from source; an installed package has its bytecode.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "supervisor", "profiles", "ipc"],
                   cwd=root, env=_env(root), check=True, stdout=subprocess.DEVNULL)


# One `warden run -- /bin/true` in a fresh interpreter, in the order entry() runs it,
# with a timestamp after each part (garbage collection paused as the command does).
_PHASES = """
import gc, json, os, sys, time
t = [time.perf_counter()]
gc.disable()
from warden.supervisor import cli
t.append(time.perf_counter())
from warden.supervisor.run_cli import LEAN, _supervise
fields, program = LEAN.parse(["--", "/bin/true"])
t.append(time.perf_counter())
from warden.supervisor.sandbox import build_spec, spawn
t.append(time.perf_counter())
from warden.profiles.cache import ProfileLookup
lookup = ProfileLookup("default")
t.append(time.perf_counter())
devnull = os.open(os.devnull, os.O_RDWR)
spec = build_spec(program, lookup.profile, stdio=(devnull, devnull, devnull))
lookup.keep([(b.source, b.writable) for b in spec.binds])
t.append(time.perf_counter())
box = spawn(spec)
t.append(time.perf_counter())
st = _supervise(box)
t.append(time.perf_counter())
assert st.outcome.value == "ok", st
print(json.dumps({"hit": lookup.hit, "t": [(b - a) * 1e3 for a, b in zip(t, t[1:])]}))
"""
_PHASE_NAMES = (
    "import warden.supervisor.cli (the lean entry; no click)",
    "import warden.supervisor.run_cli + options, lean parse",
    "import warden.supervisor.sandbox (spawn, build_spec and their records)",
    "profile: ProfileLookup (cache hit: key, MAC, JSON decode, re-checks)",
    "build_spec (filter cache hit: key, read, MAC; filter checks)",
    "spawn: parent side of the setup, overlapped with the child's",
    "_supervise: /bin/true runs, reap, status, cgroup removal",
)


def phases(runs: int) -> None:
    """Median and min of each part of `warden run`, in fresh interpreters."""
    env = _env()
    subprocess.run([sys.executable, "-c", _PHASES], env=env, check=True, cwd="/",
                   stdout=subprocess.DEVNULL)  # fills the caches
    got: list[list[float]] = []
    for _ in range(runs):
        r = subprocess.run([sys.executable, "-c", _PHASES], env=env, check=True, cwd="/",
                           capture_output=True, text=True)
        rec = json.loads(r.stdout)
        assert rec["hit"], "the profile cache missed"
        got.append(rec["t"])
    start = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        start.append((time.perf_counter() - t) * 1e3)
    print(f"{runs} runs, load average {os.getloadavg()[0]:.2f}")
    print("| part | median ms | min ms |")
    print("|---|---:|---:|")
    print(f"| interpreter start and exit (`python -c pass`, separately) "
          f"| {statistics.median(start):.2f} | {min(start):.2f} |")
    for i, name in enumerate(_PHASE_NAMES):
        col = [g[i] for g in got]
        print(f"| {name} | {statistics.median(col):.2f} | {min(col):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--phases", action="store_true",
                    help="instead: time each part of `warden run` in fresh interpreters")
    ap.add_argument("--before", metavar="DIR",
                    help="another checkout of warden whose `warden run` gets a row of its "
                         "own, for before/after numbers: a worktree with its own .venv (made "
                         "by scripts/setup), or a `git archive` of the old layout")
    args = ap.parse_args()
    if args.phases:
        phases(args.runs)
        return

    if args.before and not os.path.exists(os.path.join(args.before, ".venv", "bin", "python")):
        _compile_bytecode(os.path.abspath(args.before))
    from warden.profiles import load_profile
    from warden.profiles.compiler import compile_policy
    from warden.supervisor.sandbox import build_spec, spawn

    profile = load_profile("default")
    devnull = os.open(os.devnull, os.O_RDWR)
    spec = build_spec(["/bin/true"], profile, stdio=(devnull, devnull, devnull))

    def api_prebuilt() -> None:
        st = spawn(spec).wait()
        assert st is not None and st.outcome.value == "ok", st

    def api_rlimits() -> None:
        os.environ["WARDEN_CGROUP"] = "none"
        try:
            st = spawn(spec).wait()
        finally:
            del os.environ["WARDEN_CGROUP"]
        assert st is not None and st.outcome.value == "ok", st

    def api_with_spec() -> None:
        s = build_spec(["/bin/true"], load_profile("default"), stdio=(devnull, devnull, devnull))
        st = spawn(s).wait()
        assert st is not None and st.outcome.value == "ok", st

    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    env = _env()

    def warden_run(env: dict[str, str], argv: list[str], cwd: str = "/") -> Callable[[], None]:
        def run() -> None:
            r = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            assert r.returncode == 0, (r.returncode, r.stderr.decode(errors="replace"))

        return run

    run_true = ["run", "--", "/bin/true"]
    script = os.path.join(os.path.dirname(sys.executable), "warden")
    rows: dict[str, Callable[[], object]] = {
        "warden run -- /bin/true (default profile, filter cache warm)": warden_run(
            env, [script, *run_true]),
        "python -m warden run -- /bin/true": warden_run(
            env, [sys.executable, "-m", "warden", *run_true]),
        "warden run, no filter cache (WARDEN_NO_CACHE=1)": warden_run(
            _env(WARDEN_NO_CACHE="1"), [script, *run_true]),
        "warden run, rlimits instead of a cgroup (WARDEN_CGROUP=none)": warden_run(
            _env(WARDEN_CGROUP="none"), [script, *run_true]),
    }
    if args.before:
        before = os.path.abspath(args.before)
        venv_python = os.path.join(before, ".venv", "bin", "python")
        if os.path.exists(venv_python):
            # A worktree with its own venv (scripts/setup installed its wheel there):
            # its `python -m warden run`, the same interpreter build as ours.
            rows[f"before: python -m warden run from {args.before}"] = warden_run(
                env, [venv_python, "-m", "warden", *run_true])
        else:
            # An older checkout, from before the warden namespace: `python -m supervisor`
            # with the checkout on the path (`python -m` puts the cwd first: run there).
            rows[f"before: python -m supervisor run from {args.before}"] = warden_run(
                _env(before), [sys.executable, "-m", "supervisor", *run_true], cwd=before)
    rows |= {
        f"{os.path.basename(sys.executable)} -c pass": lambda: subprocess.run(
            [sys.executable, "-c", "pass"], env=env, check=True),
        "subprocess.run(['/bin/true'])": lambda: subprocess.run(["/bin/true"], check=True),
        "API: spawn(spec).wait(), spec built once": api_prebuilt,
        "API: same, rlimits instead of a cgroup (WARDEN_CGROUP=none)": api_rlimits,
        "API: build_spec + spawn + wait": api_with_spec,
    }
    bpf_file = None
    if not shutil.which("bwrap") and os.geteuid() == 0 and shutil.which("apt-get"):
        # The reference tool, for this benchmark only (not a warden dependency).
        subprocess.run(["apt-get", "install", "-y", "-qq", "bubblewrap"],
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                       stdout=subprocess.DEVNULL, check=False)
    if shutil.which("bwrap"):
        bpf_file = tempfile.TemporaryFile()  # noqa: SIM115 - lives for the whole run
        bpf_file.write(compile_policy(profile.seccomp))
        bpf_file.flush()

        def bwrap() -> None:
            assert bpf_file is not None
            fd = os.dup(bpf_file.fileno())
            os.lseek(fd, 0, os.SEEK_SET)
            try:
                r = subprocess.run(bwrap_true_argv(fd), pass_fds=(fd,), **quiet)  # type: ignore[call-overload]
            finally:
                os.close(fd)
            assert r.returncode == 0, r

        rows["bwrap --unshare-all --die-with-parent --new-session + seccomp"] = bwrap
    else:
        print("bwrap not found (apt-get install -y bubblewrap): its row is skipped",
              file=sys.stderr)

    for fn in rows.values():  # warm caches, page in the binaries
        fn()
    load_before = f"{os.getloadavg()[0]:.2f}"
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.runs):
        for name, fn in rows.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)

    py_median = statistics.median(times[f"{os.path.basename(sys.executable)} -c pass"])
    bw = times.get("bwrap --unshare-all --die-with-parent --new-session + seccomp")
    bw_median = statistics.median(bw) if bw else None
    print(f"spawn-to-exit of /bin/true, {args.runs} runs each, interleaved; "
          f"{os.cpu_count()} CPUs, uid {os.geteuid()}, kernel {os.uname().release}")
    print(f"limits mechanism: {spawn(spec).wait().limits_mechanism}")  # type: ignore[union-attr]
    print(f"load average before: {load_before}, after: {os.getloadavg()[0]:.2f}")
    print()
    print("| what | min ms | median ms | p90 ms | median vs python -c pass | median vs bwrap |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ts in times.items():
        ts.sort()
        med = statistics.median(ts)
        p90 = ts[int(len(ts) * 0.9) - 1]
        vs_bw = f"{med / bw_median:.2f}x" if bw_median else "n/a"
        print(f"| {name} | {ts[0]:.2f} | {med:.2f} | {p90:.2f} | {med / py_median:.2f}x "
              f"| {vs_bw} |")


if __name__ == "__main__":
    main()

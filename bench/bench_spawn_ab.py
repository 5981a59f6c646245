"""API spawn(spec).wait() of /bin/true in two trees, one spawn at a time, beside bwrap.

    .venv/bin/python bench/bench_spawn_ab.py --before /path/to/other/.venv/bin/python [--runs N]

Each tree's interpreter runs a small server (this file with --serve) that
builds the default profile's spec once and, per request on its stdin, times
one `spawn(spec).wait()` (with a cgroup if this machine gives one, or with
`WARDEN_CGROUP=none`: rlimits) and writes the milliseconds back. The driver
goes round the rows one spawn each, so load from other processes hits every
row alike; bwrap (the same filter, bench/reference_tools.py) is timed by the
driver itself from a fork+exec, like bench_run.py's row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def serve() -> None:
    from warden.profiles import load_profile
    from warden.supervisor.sandbox import build_spec, spawn

    devnull = os.open(os.devnull, os.O_RDWR)
    spec = build_spec(["/bin/true"], load_profile("default"), stdio=(devnull, devnull, devnull))
    out = sys.stdout
    for line in sys.stdin:
        mode = line.strip()
        if mode == "rl":
            os.environ["WARDEN_CGROUP"] = "none"
        t = time.perf_counter()
        st = spawn(spec).wait()
        dt = (time.perf_counter() - t) * 1e3
        os.environ.pop("WARDEN_CGROUP", None)
        assert st is not None and st.outcome.value == "ok", st
        out.write(f"{dt:.4f} {st.limits_mechanism}\n")
        out.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--before", required=True, help="the other tree's python")
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    trees = {"after": sys.executable, "before": args.before}
    servers = {}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WARDEN_CGROUP")}
    for name, python in trees.items():
        servers[name] = subprocess.Popen(
            [python, os.path.abspath(__file__), "--serve", "--before", "-"], cwd="/",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    mechanisms: dict[str, str] = {}

    def api(name: str, mode: str) -> float:
        s = servers[name]
        assert s.stdin is not None and s.stdout is not None
        s.stdin.write(mode + "\n")
        s.stdin.flush()
        ms, mech = s.stdout.readline().split()
        mechanisms[f"{name} {mode}"] = mech
        return float(ms)

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from reference_tools import bwrap_true_argv

    from warden.profiles import load_profile
    from warden.profiles.compiler import compile_policy

    bpf = tempfile.TemporaryFile()  # noqa: SIM115 - lives for the whole run
    bpf.write(compile_policy(load_profile("default").seccomp))
    bpf.flush()

    def bwrap() -> float:
        fd = os.dup(bpf.fileno())
        os.lseek(fd, 0, os.SEEK_SET)
        t = time.perf_counter()
        try:
            subprocess.run(bwrap_true_argv(fd), pass_fds=(fd,), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            os.close(fd)
        return (time.perf_counter() - t) * 1e3

    rows = {
        "after: spawn(spec).wait(), cgroup": lambda: api("after", "cg"),
        "before: spawn(spec).wait(), cgroup": lambda: api("before", "cg"),
        "after: same, rlimits (WARDEN_CGROUP=none)": lambda: api("after", "rl"),
        "before: same, rlimits (WARDEN_CGROUP=none)": lambda: api("before", "rl"),
    }
    if shutil.which("bwrap"):
        rows["bwrap --unshare-all --die-with-parent --new-session + seccomp"] = bwrap
    for fn in rows.values():
        for _ in range(3):
            fn()
    load0 = os.getloadavg()[0]
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.runs):
        for name, fn in rows.items():
            times[name].append(fn())
    load1 = os.getloadavg()[0]
    for s in servers.values():
        assert s.stdin is not None
        s.stdin.close()
        s.wait()
    bw = times.get("bwrap --unshare-all --die-with-parent --new-session + seccomp")
    bw_med = statistics.median(bw) if bw else None
    print(f"{args.runs} rounds, one spawn per row each, interleaved; load average {load0:.2f} "
          f"before, {load1:.2f} after; uid {os.geteuid()}; mechanisms {mechanisms}")
    print()
    print("| what | min ms | median ms | p90 ms | median vs bwrap |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        ts.sort()
        med = statistics.median(ts)
        p90 = ts[int(len(ts) * 0.9) - 1]
        vs = f"{med / bw_med:.2f}x" if bw_med else "n/a"
        print(f"| {name} | {ts[0]:.2f} | {med:.2f} | {p90:.2f} | {vs} |")


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve()
    else:
        main()

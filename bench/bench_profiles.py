"""Cost of warden's seccomp filters, side by side with Docker's default profile.

Python's own loop overhead would swamp a filter's cost, so the timing loop is
a tiny C program (bench/seccomp_loop.c) compiled here with `cc -O2`; it loads
a raw BPF file with seccomp(2) and calls one syscall N times (best of 5),
and every filter is measured in each of ROUNDS interleaved rounds (best
round counts), so load from elsewhere on the machine hits all alike.

    python bench/bench_profiles.py            # prints a markdown table
    python bench/bench_profiles.py --json     # the same numbers as JSON

Columns: ns per allowed getppid() (nothing to check but the number); ns per
allowed argument-checked socket(AF_UNIX, <bad type>) (every profile here tests
the domain; the kernel then fails fast with EINVAL); ns per ioctl(-1, TCGETS)
(warden tests the request against TIOCSTI/TIOCLINUX, Docker does not test
ioctl at all; the kernel fails fast with EBADF), BPF instruction
count, and compile time (profile file -> BPF, median of 5).
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
from pathlib import Path

import pyseccomp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from warden.profiles import builtin_names, compiler, load_profile, oci, syscalls  # noqa: E402

DOCKER_JSON = ROOT / "tests" / "profiles" / "docker-default-seccomp.json"
ITERATIONS = 1_000_000
ROUNDS = 3
TCGETS = 0x5401
AF_UNIX = 1
BAD_SOCK_TYPE = 0xFFFF  # the kernel answers EINVAL at once: no socket is created


def build_loop(workdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("bench needs a C compiler (cc)")
    exe = workdir / "seccomp_loop"
    subprocess.run([cc, "-O2", "-o", str(exe), str(HERE / "seccomp_loop.c")], check=True)
    return exe


def time_call(exe: Path, bpf_file: str, nr: int, a0: int, a1: int) -> float | None:
    """ns per call, or None when the filter does not allow the call (the loop is killed)."""
    proc = subprocess.run([str(exe), bpf_file, str(nr), str(a0), str(a1), str(ITERATIONS)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return float(proc.stdout)


def docker_runc_style() -> bytes:
    """Docker's profile the way runc compiles it: libseccomp's default (no binary tree)."""
    imported = oci.load_oci(DOCKER_JSON.read_text(), str(DOCKER_JSON))
    filt = compiler.build_filter(imported.policy)
    filt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 1)
    return compiler.export_bpf(filt)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    getppid, ioctl = syscalls.number("getppid"), syscalls.number("ioctl")
    socket = syscalls.number("socket")
    assert getppid is not None and ioctl is not None and socket is not None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        exe = build_loop(work)
        filters: list[tuple[str, bytes | None, float | None]] = [("no filter", None, None)]
        for name in builtin_names():
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                code = compiler.compile_policy(load_profile(name).seccomp)
                times.append(time.perf_counter() - t0)
            filters.append((name, code, statistics.median(times)))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            imported = oci.load_oci(DOCKER_JSON.read_text(), str(DOCKER_JSON))
            code = compiler.compile_policy(imported.policy)
            times.append(time.perf_counter() - t0)
        filters.append(("docker default (binary tree)", code, statistics.median(times)))
        filters.append(("docker default (runc-style, linear)", docker_runc_style(), None))
        paths = []
        for i, (_, code, _) in enumerate(filters):
            path = "-"
            if code is not None:
                path = str(work / f"f{i}.bpf")
                Path(path).write_bytes(code)
            paths.append(path)
        calls = {"getppid_ns": (getppid, 0, 0),
                 "socket_checked_ns": (socket, AF_UNIX, BAD_SOCK_TYPE),
                 "ioctl_checked_ns": (ioctl, 2**32 - 1, TCGETS)}
        # Rounds interleave the filters, and the best round counts, so a burst
        # of load from elsewhere on the machine hits every filter alike.
        best: dict[tuple[int, str], float | None] = {}
        for _ in range(ROUNDS):
            for i, path in enumerate(paths):
                for key, (nr, a0, a1) in calls.items():
                    t = time_call(exe, path, nr, a0, a1)
                    old = best.get((i, key))
                    best[(i, key)] = t if old is None or (t is not None and t < old) else old
        for i, (label, code, compile_s) in enumerate(filters):
            rows.append({
                "filter": label,
                **{key: best[(i, key)] for key in calls},
                "instructions": None if code is None else len(code) // 8,
                "compile_ms": None if compile_s is None else round(compile_s * 1000, 1),
            })
    if opts.json:
        print(json.dumps({"kernel": os.uname().release, "rows": rows}, indent=2))
        return 0
    print(f"kernel {os.uname().release}, {ITERATIONS:,} calls per run, best of "
          f"{5 * ROUNDS} runs in {ROUNDS} interleaved rounds\n")
    print("| filter | getppid ns/call | socket(AF_UNIX) ns/call (arg-checked) "
          "| ioctl(TCGETS) ns/call (arg-checked by warden) | BPF instructions | compile ms |")
    print("|---|---:|---:|---:|---:|---:|")
    def cell(value: object) -> str:
        if value is None:
            return ""
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    for r in rows:
        timings = " | ".join(cell(r[k]) or "not allowed"
                             for k in ("getppid_ns", "socket_checked_ns", "ioctl_checked_ns"))
        print(f"| {r['filter']} | {timings} | {cell(r['instructions'])} "
              f"| {cell(r['compile_ms'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

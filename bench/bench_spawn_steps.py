"""Where one API spawn(spec).wait() of /bin/true spends its time, step by step.

    .venv/bin/python bench/bench_spawn_steps.py [--runs N] [--rlimits]

Instrumented: the child's step runner (warden.supervisor.sandbox.child._Steps)
is wrapped so that the init and the workload stamp CLOCK_MONOTONIC after each
setup step into a shared anonymous mapping made before the clone; the parent
stamps its own phases. The stamps themselves cost a little (a page of the
mapping, a struct.pack per step), so the total is slightly above the plain
benchmark's. Medians over N spawns, after 3 unrecorded ones.
"""

from __future__ import annotations

import argparse
import collections
import mmap
import os
import statistics
import struct
import time

SLOT = struct.Struct("=iq")  # step index, monotonic ns
START = 4000  # slot of the init's first stamp (taken right after the clone)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rlimits", action="store_true", help="WARDEN_CGROUP=none")
    args = ap.parse_args()
    if args.rlimits:
        os.environ["WARDEN_CGROUP"] = "none"
    from warden.profiles import load_profile
    from warden.supervisor.sandbox import build_spec, child, launch

    devnull = os.open(os.devnull, os.O_RDWR)
    spec = build_spec(["/bin/true"], load_profile("default"), stdio=(devnull, devnull, devnull))
    buf = mmap.mmap(-1, 1 << 17, flags=mmap.MAP_SHARED)
    steps = list(child.SetupStep)
    index = {s: i for i, s in enumerate(steps)}
    runner = child._Steps.__call__

    def stamped(self: child._Steps, which: child.SetupStep, fn: object, *a: object,
                **k: object) -> object:
        r = runner(self, which, fn, *a, **k)  # type: ignore[arg-type]
        n = struct.unpack_from("=i", buf, 0)[0]
        SLOT.pack_into(buf, 8 + n * SLOT.size, index[which], time.monotonic_ns())
        struct.pack_into("=i", buf, 0, n + 1)
        return r

    child._Steps.__call__ = stamped  # type: ignore[method-assign]
    acc: dict[str, list[float]] = collections.defaultdict(list)
    real_setup = child.child_setup

    def setup(plan: object, sock: int, status: int) -> None:
        SLOT.pack_into(buf, 8 + START * SLOT.size, -1, time.monotonic_ns())
        real_setup(plan, sock, status)  # type: ignore[arg-type]

    launch.child_setup = setup  # type: ignore[assignment]

    def one(record: bool) -> None:
        struct.pack_into("=i", buf, 0, 0)
        t0 = time.monotonic_ns()
        box = launch.spawn(spec)
        t1 = time.monotonic_ns()
        st = box.wait()
        t2 = time.monotonic_ns()
        assert st is not None and st.outcome.value == "ok", st
        if not record:
            return
        n = struct.unpack_from("=i", buf, 0)[0]
        prev = SLOT.unpack_from(buf, 8 + START * SLOT.size)[1]
        acc["parent: prepare() and clone, to the init's first instruction"].append(prev - t0)
        for i in range(n):
            step, t = SLOT.unpack_from(buf, 8 + i * SLOT.size)
            acc[f"child: {steps[step].value}"].append(t - prev)
            prev = t
        acc["last step to spawn() returning (exec seen by the parent)"].append(t1 - prev)
        acc["wait(): the program's run, exit, teardown, reap, status"].append(t2 - t1)
        acc["total"].append(t2 - t0)

    for _ in range(3):
        one(False)
    load = os.getloadavg()[0]
    for _ in range(args.runs):
        one(True)
    print(f"{args.runs} spawns, load average {load:.2f} before, {os.getloadavg()[0]:.2f} after, "
          f"{'rlimits' if args.rlimits else 'cgroup if available'}; child steps in the "
          "order their stamps landed (init, then workload, then init)\n")
    print("| phase | median ms | min ms |\n|---|---:|---:|")
    for name, v in acc.items():
        print(f"| {name} | {statistics.median(v) / 1e6:.3f} | {min(v) / 1e6:.3f} |")


if __name__ == "__main__":
    main()

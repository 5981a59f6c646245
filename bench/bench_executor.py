"""Tasks per second through SandboxExecutor beside ProcessPoolExecutor, in one run.

Run from the repository root:  python bench/bench_executor.py [--quick]

The task is `total(numbers: list[int]) -> int` over a 10-element list:
small enough that the number is the executor's own cost per task (pickling the
call, the channel, decoding and validating the result), not the work. Both
executors have 2 workers, are started before timing, and are measured in
interleaved rounds (A, B, A, B, ...) so a change in the machine's load hits
both alike. Each round submits N tasks at once and waits for all of them.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import sys
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from supervisor import SandboxExecutor  # noqa: E402
from tests.supervisor.executor_tasks import total  # noqa: E402

NUMBERS = list(range(10))


def one_round(ex: cf.Executor, n: int) -> float:
    """Tasks per second for n tasks submitted at once."""
    start = time.perf_counter()
    futures = [ex.submit(total, NUMBERS) for _ in range(n)]
    for f in futures:
        assert f.result() == 45
    return n / (time.perf_counter() - start)


def map_round(ex: cf.Executor, n: int) -> float:
    start = time.perf_counter()
    assert sum(ex.map(total, [NUMBERS] * n)) == 45 * n
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="3 rounds of 500 tasks")
    args = ap.parse_args()
    rounds, n = (3, 500) if args.quick else (7, 2000)
    workers = 2
    results: dict[str, list[float]] = {}
    with SandboxExecutor(max_workers=workers,
                         preload=["tests.supervisor.executor_tasks"]) as sandboxed, \
            cf.ProcessPoolExecutor(max_workers=workers) as processes:
        contenders: list[tuple[str, cf.Executor, Callable[[cf.Executor, int], float]]] = [
            ("SandboxExecutor submit", sandboxed, one_round),
            ("ProcessPoolExecutor submit", processes, one_round),
            ("SandboxExecutor map", sandboxed, map_round),
            ("ProcessPoolExecutor map", processes, map_round),
        ]
        for _name, ex, measure in contenders:  # warm up: workers started, code paths hot
            measure(ex, 50)
        for _ in range(rounds):
            for name, ex, measure in contenders:
                results.setdefault(name, []).append(measure(ex, n))
    print(f"{rounds} interleaved rounds of {n} tasks, {workers} workers, "
          f"total(list of {len(NUMBERS)} ints) -> int\n")
    print("| executor | tasks/s median | min | max |")
    print("|---|---|---|---|")
    for name, xs in results.items():
        print(f"| {name} | {statistics.median(xs):,.0f} | {min(xs):,.0f} | {max(xs):,.0f} |")


if __name__ == "__main__":
    main()

"""Tasks per second through SandboxExecutor beside ProcessPoolExecutor, in one run.

Run from the repository root:  python bench/bench_executor.py [--quick]

The task is `total(numbers: list[int]) -> int` over a 10-element list:
small enough that the number is the executor's own cost per task (pickling the
call, the channel, decoding and validating the result), not the work. Both
executors have 2 workers, are started before timing, and are measured in
interleaved rounds (A, B, A, B, ...) so a change in the machine's load hits
both alike. Each round submits N tasks at once and waits for all of them.

Then the same through dask.distributed (when installed): one LocalCluster
worker (in-process, 2 threads) with DaskSandboxExecutor as its "sandbox"
executor; rounds alternate between tasks annotated executor="sandbox" and
plain tasks on the worker's own threads.
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

from tests.supervisor.executor_tasks import total  # noqa: E402
from warden.supervisor import SandboxExecutor  # noqa: E402

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


def dask_rounds(rounds: int, n: int, workers: int) -> dict[str, list[float]] | None:
    try:
        import dask
        import distributed
    except ImportError:
        return None
    from warden.supervisor.dask_executor import DaskSandboxExecutor

    def measure(client: distributed.Client, sandboxed: bool, count: int) -> float:
        start = time.perf_counter()
        with dask.annotate(executor="sandbox" if sandboxed else "default"):
            futures = client.map(total, [NUMBERS] * count, pure=False)
        assert sum(client.gather(futures)) == 45 * count
        return count / (time.perf_counter() - start)

    ex = DaskSandboxExecutor(max_workers=workers, preload=["tests.supervisor.executor_tasks"])
    results: dict[str, list[float]] = {}
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=workers,
                                  dashboard_address=None, executor={"sandbox": ex}) as cluster, \
            distributed.Client(cluster) as client:
        for sandboxed in (True, False):
            measure(client, sandboxed, 50)
        for _ in range(rounds):
            for name, sandboxed in (("dask + DaskSandboxExecutor", True),
                                    ("dask, plain worker threads", False)):
                results.setdefault(name, []).append(measure(client, sandboxed, n))
    ex.shutdown()
    return results


def table(results: dict[str, list[float]]) -> None:
    print("| executor | tasks/s median | min | max |")
    print("|---|---|---|---|")
    for name, xs in results.items():
        print(f"| {name} | {statistics.median(xs):,.0f} | {min(xs):,.0f} | {max(xs):,.0f} |")


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
    table(results)
    on_dask = dask_rounds(rounds, n // 2, workers)
    if on_dask is not None:
        print(f"\n{rounds} interleaved rounds of {n // 2} tasks through one dask worker "
              f"({workers} threads; the sandbox executor with {workers} workers)\n")
        table(on_dask)


if __name__ == "__main__":
    main()

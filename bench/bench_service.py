"""Benchmark: a call through warden serve's named socket vs the in-process pool call.

One pool of one zygote worker (tests.supervisor.workers:CalcImpl, profile strict) and the
service socket on it (an abstract name), in this process. Interleaved rounds:

    pool.call      await pool.call("square", 3) from the supervisor's own loop
    service        a client process: ServiceClient.pool("calc").square(3), blocking
                   (client -> service -> worker -> service -> client: two channel hops)

The client is another process, as a real one is; the cost of an fd on a call is
bench_ipc.py's ipc+fd row.

    python bench/bench_service.py            # markdown table
    python bench/bench_service.py --quick    # fewer calls
    python bench/bench_service.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.supervisor.workers import Calc  # noqa: E402
from warden.supervisor import Supervisor  # noqa: E402
from warden.supervisor.serve import _service_socket  # noqa: E402
from warden.supervisor.service import Role, Service, ServiceConfig  # noqa: E402

CLIENT = """
import sys, time
from warden.supervisor import service
from tests.supervisor.workers import Calc
n, rounds = int(sys.argv[1]), int(sys.argv[2])
with service.connect(sys.argv[3], pools={"calc": Calc}, validate_outgoing=False) as s:
    sq = s.pool("calc").square
    for _ in range(50):
        sq(3)
    for _ in range(rounds):
        sys.stdin.readline()
        t = time.perf_counter()
        for _ in range(n):
            sq(3)
        print((time.perf_counter() - t) / n, flush=True)
"""


async def main(n: int, rounds: int) -> dict[str, list[float]]:
    address = f"@warden-bench-{os.getpid()}"
    cfg = ServiceConfig(path=None, abstract=address[1:], roles=(
        Role("bench", uids=frozenset({os.geteuid()}), pools=("calc",)),))
    out: dict[str, list[float]] = {"pool.call": [], "service": []}
    async with Supervisor(start_method="zygote",
                          zygote_preload=["tests.supervisor.workers"]) as sup:
        pool = await sup.pool(Calc, "tests.supervisor.workers:CalcImpl", size=1,
                              profile="strict", call_timeout=30)
        service = Service(cfg, {"calc": pool}, sup.status)
        service.start(_service_socket(cfg, None))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [ROOT, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]))
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, str(n), str(rounds), address, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert client.stdin is not None and client.stdout is not None
        for _ in range(50):
            await pool.call("square", 3)
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(n):
                await pool.call("square", 3)
            out["pool.call"].append((time.perf_counter() - t) / n)
            client.stdin.write(b"go\n")
            await client.stdin.drain()
            out["service"].append(float(await client.stdout.readline()))
        client.stdin.close()
        await client.wait()
        await service.aclose()
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    n, rounds = (200, 3) if a.quick else (2000, 5)
    res = asyncio.run(main(n, rounds))
    med = {k: statistics.median(v) * 1e6 for k, v in res.items()}
    if a.json:
        print(json.dumps({"us_per_call": med, "calls_per_round": n, "rounds": rounds}))
    else:
        print(f"| path | µs per call (median of {rounds} rounds of {n}) | calls/s |")
        print("|---|---|---|")
        for k, us in med.items():
            print(f"| {k} | {us:.1f} | {1e6 / us:,.0f} |")
        print(f"\nservice / pool.call: {med['service'] / med['pool.call']:.2f}x")

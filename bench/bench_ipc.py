"""Benchmark: ipc typed calls against raw SEQPACKET and multiprocessing.Pipe.

Parent ↔ forked child, both pinned to one CPU and unpinned, at 64 B / 4 KiB / 64 KiB:

    raw        SEQPACKET send/recv of the payload bytes (the floor)
    ipc        validated typed call `echo(data: bytes) -> bytes`, blocking API both ends
    ipc-async  the same call from an asyncio trusted side (`await ch.remote.echo`)
    ipc+fd     the same call with one ReadFile fd attached (checked with fstat/F_GETFL)
    mp-bytes   multiprocessing.Pipe send_bytes/recv_bytes
    mp-pickle  multiprocessing.Pipe send/recv of ("echo", data) (pickle)

then one-way validated message throughput at 64 B, and 1 GiB through a sealed memfd.

    python bench/bench_ipc.py            # full run (under a minute)
    python bench/bench_ipc.py --quick    # fewer iterations
    python bench/bench_ipc.py --typed    # only the typed call round trips, pinned, as JSON

`--blocks N` is the goals' measurement and the way to compare two builds: every cell, the
references included, in N interleaved blocks, with each block's ratios, then min and median
(`--against base=/other/checkout/.venv/bin/python` times that build's ipc cells in the same
run; `--cpu 1` pins every process to CPU 1):

    python bench/bench_ipc.py --blocks 30 --calls 4000 --cpu 1 --against base=...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mmap
import multiprocessing
import multiprocessing.connection
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import msgspec  # noqa: E402

from warden import ipc  # noqa: E402

Blob = Annotated[bytes, msgspec.Meta(max_length=100_000)]
Line = Annotated[bytes, msgspec.Meta(max_length=256)]


class Bench(ipc.Interface, name="bench.Bench"):
    @ipc.call()
    def echo(self, ctx: ipc.Context, data: Blob) -> bytes:
        raise NotImplementedError

    @ipc.call()
    def echo_fd(self, ctx: ipc.Context, f: ipc.ReadFile, data: Blob) -> bytes:
        raise NotImplementedError

    @ipc.message()
    def push(self, ctx: ipc.Context, data: Line) -> None:
        raise NotImplementedError

    @ipc.call()
    def consume(self, ctx: ipc.Context, mem: ipc.SealedMemory) -> int:
        raise NotImplementedError


class BenchImpl(Bench):
    def __init__(self) -> None:
        self.pushed = 0
        self.read_seconds = 0.0

    def echo(self, ctx: ipc.Context, data: bytes) -> bytes:
        return data

    def echo_fd(self, ctx: ipc.Context, f: ipc.ReadFile, data: bytes) -> bytes:
        f.close()
        return data

    def push(self, ctx: ipc.Context, data: bytes) -> None:
        self.pushed += 1

    def consume(self, ctx: ipc.Context, mem: ipc.SealedMemory) -> int:
        t0 = time.perf_counter()
        with mem, mem.map() as m:
            # Read every byte in place (memchr over the shared pages; no copy, no syscall).
            found = m.find(b"\x00")
        self.read_seconds = time.perf_counter() - t0
        return found


SIZES = {"64 B": 64, "4 KiB": 4096, "64 KiB": 65536}
KINDS = ("raw", "ipc", "ipc-async", "ipc+fd", "mp-bytes", "mp-pickle")


def pinned(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def fork_child(body: Callable[[], None], cpu: int | None) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            pinned(cpu)
            body()
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def reap(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("bench child failed")


def timed(n: int, op: Callable[[], object]) -> float:
    for _ in range(min(200, n)):
        op()
    t0 = time.perf_counter()
    for _ in range(n):
        op()
    return (time.perf_counter() - t0) / n * 1e6


# ---- round trips ---------------------------------------------------------------------------

def rt_raw(data: bytes, n: int, cpu: int | None) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def child() -> None:
        a.close()
        buf = bytearray(len(data) + 64)
        while True:
            k = b.recv_into(buf)
            if k == 0:
                return
            b.send(memoryview(buf)[:k])

    pid = fork_child(child, cpu)
    b.close()
    buf = bytearray(len(data) + 64)

    def op() -> None:
        a.send(data)
        a.recv_into(buf)

    us = timed(n, op)
    a.close()
    reap(pid)
    return us


def rt_ipc(data: bytes, n: int, cpu: int | None, with_fd: bool = False) -> float:
    a, b = ipc.channel_pair()

    def child() -> None:
        a.close()
        ipc.connect(b, serve=BenchImpl(), validate_outgoing=False).serve_forever()

    pid = fork_child(child, cpu)
    b.close()
    c = ipc.connect(a, remote=Bench, validate_outgoing=False)
    if with_fd:
        f = open(__file__, "rb")  # noqa: SIM115
        echo_fd = c.remote.echo_fd
        us = timed(n, lambda: echo_fd(f, data))
        f.close()
    else:
        echo = c.remote.echo
        us = timed(n, lambda: echo(data))
    c.close()
    reap(pid)
    return us


def rt_ipc_async(data: bytes, n: int, cpu: int | None) -> float:
    a, b = ipc.channel_pair()

    def child() -> None:
        a.close()
        ipc.connect(b, serve=BenchImpl(), validate_outgoing=False).serve_forever()

    pid = fork_child(child, cpu)
    b.close()

    async def main() -> float:
        ch = ipc.attach(a, peer_id="bench", remote=Bench, validate_outgoing=False)
        echo = ch.remote.echo
        for _ in range(200):
            await echo(data)
        t0 = time.perf_counter()
        for _ in range(n):
            await echo(data)
        us = (time.perf_counter() - t0) / n * 1e6
        ch.close()
        return us

    us = asyncio.run(main())
    reap(pid)
    return us


def rt_mp(data: bytes, n: int, cpu: int | None, pickle: bool) -> float:
    a, b = multiprocessing.Pipe()

    def child() -> None:
        a.close()
        try:
            while True:
                if pickle:
                    msg = b.recv()
                    b.send(msg[1])
                else:
                    b.send_bytes(b.recv_bytes())
        except EOFError:
            return

    pid = fork_child(child, cpu)
    b.close()
    def op_pickle() -> None:
        a.send(("echo", data))
        a.recv()

    def op_bytes() -> None:
        a.send_bytes(data)
        a.recv_bytes()

    us = timed(n, op_pickle if pickle else op_bytes)
    a.close()
    reap(pid)
    return us


# ---- one-way throughput ------------------------------------------------------------------

def oneway_raw(n: int, cpu: int | None) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    data = b"x" * 64

    def child() -> None:
        a.close()
        for _ in range(n):
            b.send(data)
        b.close()

    t0 = time.perf_counter()
    pid = fork_child(child, cpu)
    b.close()
    buf = bytearray(256)
    count = 0
    while a.recv_into(buf):
        count += 1
    dt = time.perf_counter() - t0
    a.close()
    reap(pid)
    assert count == n
    return n / dt


def oneway_ipc(n: int, cpu: int | None, use_async: bool) -> float:
    a, b = ipc.channel_pair()
    data = b"x" * 64

    def child() -> None:
        a.close()
        c = ipc.connect(b, remote=Bench, validate_outgoing=False)
        push = c.remote.push
        for _ in range(n):
            push(data)
        c.close()

    impl = BenchImpl()
    t0 = time.perf_counter()
    pid = fork_child(child, cpu)
    b.close()
    if use_async:

        async def main() -> None:
            ch = ipc.attach(a, peer_id="bench", serve=impl)
            await ch.wait_closed()

        asyncio.run(main())
    else:
        ipc.connect(a, serve=impl).serve_forever()
    dt = time.perf_counter() - t0
    reap(pid)
    assert impl.pushed == n, impl.pushed
    return n / dt


# ---- sealed memfd ------------------------------------------------------------------------

def fill(buffer: Any, size: int, block: bytes) -> float:
    view = memoryview(buffer)
    t0 = time.perf_counter()
    for off in range(0, size, len(block)):
        view[off : off + len(block)] = block
    dt = time.perf_counter() - t0
    view.release()
    return dt


def memfd_gib(cpu: int | None) -> dict[str, float]:
    size = 1 << 30
    block = b"\xa5" * (16 << 20)
    # Baselines in this process: writing 1 GiB of fresh anonymous memory (first touch of
    # each page, like the memfd), and memchr over 1 GiB already in memory.
    anon = mmap.mmap(-1, size)
    fresh_s = fill(anon, size, block)
    t0 = time.perf_counter()
    anon.find(b"\x00")
    scan_s = time.perf_counter() - t0
    anon.close()

    a, b = ipc.channel_pair()
    impl = BenchImpl()
    r, w = os.pipe()

    def child() -> None:
        a.close()
        os.close(r)
        ipc.connect(b, serve=impl).serve_one()
        os.write(w, str(impl.read_seconds).encode())

    pid = fork_child(child, cpu)
    b.close()
    os.close(w)
    c = ipc.connect(a, remote=Bench, validate_outgoing=False)
    writer = ipc.MemoryWriter(size)
    fill_s = fill(writer.buffer, size, block)
    t1 = time.perf_counter()
    mem = writer.seal()
    got = c.remote.consume(mem)
    t2 = time.perf_counter()
    mem.close()
    c.close()
    read_s = float(os.read(r, 100))
    os.close(r)
    reap(pid)
    assert got == -1
    return {
        "fresh_gbs": size / fresh_s / 1e9,
        "scan_gbs": size / scan_s / 1e9,
        "fill_gbs": size / fill_s / 1e9,
        "read_gbs": size / read_s / 1e9,
        "handoff_ms": (t2 - t1 - read_s) * 1e3,
        "total_gbs": size / (fill_s + t2 - t1) / 1e9,
    }


def typed_round_trips(cpu: int, repeat: int, scale: float) -> None:
    pinned(cpu)
    best: dict[str, float] = {}
    for label, size in SIZES.items():
        data = os.urandom(size)
        n = int((5000 if size <= 4096 else 1000) * scale)
        runs: dict[str, list[float]] = {"ipc": [], "ipc-async": [], "ipc+fd": []}
        for _ in range(repeat):
            runs["ipc"].append(rt_ipc(data, n, cpu))
            runs["ipc-async"].append(rt_ipc_async(data, n, cpu))
            runs["ipc+fd"].append(rt_ipc(data, n, cpu, with_fd=True))
        best.update({f"{kind} {label}": round(min(v), 2) for kind, v in runs.items()})
    print(json.dumps(best), flush=True)


# ---- interleaved blocks: the goals' measurement ---------------------------------------------
#
# One runner process per build (this interpreter, and each --against PYTHON) holds one peer
# process per kind, each answering one call at a time, for the whole run. The driver asks
# the runners for blocks of `--calls` round trips, every cell once per block, in a shuffled
# order, so load elsewhere on the machine hits every cell alike; a runner that is not
# measuring waits in a read and costs nothing. The references run in the first runner, in the
# same layout as the typed calls (a forked peer, one call in flight), and the ratios are
# taken per block, between cells measured moments apart.

BLOCK_KINDS = ("raw", "raw-async", "mp-pickle", "ipc", "ipc-async", "ipc-aserve")
REFERENCE_KINDS = ("raw", "raw-async", "mp-pickle")
# (numerator, denominator, goal): the ratios reported per block.
RATIOS = (("ipc", "raw", 1.4), ("ipc-async", "mp-pickle", 1.0), ("ipc-aserve", "mp-pickle", 1.0),
          ("ipc-async", "raw-async", None))
Block = Callable[[int], float]


def _echo_child(b: socket.socket, size: int) -> None:
    buf = bytearray(size + 64)
    view = memoryview(buf)
    while True:
        k = b.recv_into(buf)
        if k == 0:
            return
        b.send(view[:k])


def _fork_peer(keep: int, body: Callable[[], None]) -> int:
    """Fork a peer that keeps only fds 0-2 and `keep`: the ends of the other peers it
    inherited must not stay open in it, or closing them would never reach their peers."""
    def child() -> None:
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 16)
        body()

    return fork_child(child, None)


def _peer(body: Callable[[socket.socket], None]) -> tuple[socket.socket, int]:
    """A forked peer running `body` on its end of a new channel pair (affinity inherited)."""
    a, b = ipc.channel_pair()
    pid = _fork_peer(b.fileno(), lambda: body(b))
    b.close()
    return a, pid


def _per_call(n: int, t0: int) -> float:
    return (time.perf_counter_ns() - t0) / n / 1e3


def _make_block(kind: str, data: bytes, loop: asyncio.AbstractEventLoop,
                closers: list[Callable[[], None]]) -> tuple[Block, int]:
    """The function timing `n` round trips against `kind`'s peer, started now, and the
    peer's pid."""
    if kind == "mp-pickle":
        ca, cb = multiprocessing.Pipe()

        def mp_child() -> None:
            with contextlib.suppress(EOFError):
                while True:
                    cb.send(cb.recv()[1])

        pid = _fork_peer(cb.fileno(), mp_child)
        cb.close()
        closers.append(lambda: (ca.close(), reap(pid)))
        send, recv = ca.send, ca.recv

        def mp_block(n: int) -> float:
            t0 = time.perf_counter_ns()
            for _ in range(n):
                send(("echo", data))
                recv()
            return _per_call(n, t0)

        return mp_block, pid
    if kind in ("raw", "raw-async"):
        a, pid = _peer(lambda b: _echo_child(b, len(data)))
        closers.append(lambda: (a.close(), reap(pid)))
        buf = bytearray(len(data) + 64)
        if kind == "raw":
            sock_send, recv_into = a.send, a.recv_into

            def raw_block(n: int) -> float:
                t0 = time.perf_counter_ns()
                for _ in range(n):
                    sock_send(data)
                    recv_into(buf)
                return _per_call(n, t0)

            return raw_block, pid
        # The floor of any asyncio caller: a future per call, resolved by the reader
        # callback with the reply's bytes.
        a.setblocking(False)
        waiting: list[asyncio.Future[bytes]] = []

        def on_readable() -> None:
            try:
                k = a.recv_into(buf)
            except BlockingIOError:
                return
            waiting.pop().set_result(bytes(buf[:k]))

        loop.add_reader(a.fileno(), on_readable)
        closers.insert(0, lambda: loop.remove_reader(a.fileno()))

        async def raw_async(n: int) -> float:
            create_future, sock_send = loop.create_future, a.send
            t0 = time.perf_counter_ns()
            for _ in range(n):
                fut: asyncio.Future[bytes] = create_future()
                waiting.append(fut)
                sock_send(data)
                await fut
            return _per_call(n, t0)

        return (lambda n: loop.run_until_complete(raw_async(n))), pid
    if kind == "ipc-aserve":  # a blocking caller, served by an asyncio peer
        def aserve(b: socket.socket) -> None:
            async def serve() -> None:
                ch = ipc.attach(b, peer_id="bench", serve=BenchImpl(), validate_outgoing=False)
                await ch.wait_closed()

            asyncio.run(serve())

        a, pid = _peer(aserve)
    else:
        a, pid = _peer(lambda b: ipc.connect(b, serve=BenchImpl(),
                                             validate_outgoing=False).serve_forever())
    if kind == "ipc-async":
        async def attach() -> Any:
            return ipc.attach(a, peer_id="bench", remote=Bench, validate_outgoing=False)

        ach = loop.run_until_complete(attach())
        closers.append(lambda: (ach.close(), reap(pid)))
        aecho = ach.remote.echo

        async def ipc_async(n: int) -> float:
            t0 = time.perf_counter_ns()
            for _ in range(n):
                await aecho(data)
            return _per_call(n, t0)

        return (lambda n: loop.run_until_complete(ipc_async(n))), pid
    c = ipc.connect(a, remote=Bench, validate_outgoing=False)
    closers.append(lambda: (c.close(), reap(pid)))
    echo = c.remote.echo

    def ipc_block(n: int) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            echo(data)
        return _per_call(n, t0)

    return ipc_block, pid


def _run_ns(pid: int) -> int:
    """CPU time `pid` has run, in ns (the scheduler's own count: /proc/<pid>/schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def block_runner(size: int, kinds: list[str]) -> None:
    """Serve the driver: read "<kind> <calls>" lines, answer µs per call (stdin/stdout)."""
    data = bytes(i % 251 for i in range(size))  # the same bytes in every runner
    loop = asyncio.new_event_loop()
    closers: list[Callable[[], None]] = []
    blocks = {kind: _make_block(kind, data, loop, closers) for kind in kinds}
    warm = 200
    for block, _ in blocks.values():
        block(warm)
    print("ready", flush=True)
    for line in sys.stdin:
        kind, n = line.split()
        block, peer = blocks[kind]
        block(warm // 4)  # caches and branch predictors back from the other cells
        cpu0 = _run_ns(os.getpid()) + _run_ns(peer)
        us = block(int(n))
        cpu = (_run_ns(os.getpid()) + _run_ns(peer) - cpu0) / int(n) / 1e3
        print(f"{us:.4f} {cpu:.4f}", flush=True)
    for close in closers:
        close()
    loop.close()


def interleaved(args: argparse.Namespace) -> None:
    builds = [("this", sys.executable)]
    for spec in args.against:
        label, _, python = spec.rpartition("=")
        builds.append((label or f"build{len(builds)}", python))
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # runners and their peers inherit it
    runners: dict[str, subprocess.Popen[str]] = {}
    cells: list[tuple[str, str]] = []
    for i, (label, python) in enumerate(builds):
        kinds = [k for k in args.kinds if k not in REFERENCE_KINDS or i == 0]
        runners[label] = subprocess.Popen(
            [python, os.path.abspath(__file__), "--block-runner", "--size", str(args.size),
             "--kinds", ",".join(kinds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        cells += [(label, k) for k in kinds]
    for proc in runners.values():
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a block runner failed to start")

    def name(label: str, kind: str) -> str:
        return kind if kind in REFERENCE_KINDS or len(builds) == 1 else f"{kind}@{label}"

    load0 = os.getloadavg()
    print(f"python {sys.version.split()[0]}, msgspec {msgspec.__version__}, {args.size} B, "
          f"{args.blocks} blocks of {args.calls} calls per cell in {args.rounds} rounds, "
          + (f"everything pinned to CPU {args.cpu}" if args.cpu is not None else "unpinned")
          + f"; load average {load0[0]:.1f}", flush=True)
    for label, python in builds:
        print(f"  {label}: {python}")
    # Per cell, per block: wall µs per round trip, and the CPU µs both processes ran for it
    # (the scheduler's count: time other jobs took the CPU is not in it, so it is the
    # measure that holds on a loaded machine; pinned to one CPU, a quiet round trip is
    # that plus the wakeups).
    metrics = ("wall", "cpu")
    results: dict[tuple[str, str, str], list[float]] = {}
    ratios: dict[tuple[str, str, str, str], list[float]] = {}
    rng = random.Random(args.seed)
    ref = builds[0][0]
    for b in range(args.blocks):
        # A block is --rounds rounds; each round runs every cell for calls/rounds round
        # trips, in a new order. A cell's value in the block is its best round: a burst of
        # other work that hits one round of one cell does not decide the block's ratios.
        got: dict[tuple[str, str, str], float] = {}
        for _ in range(args.rounds):
            order = cells[:]
            rng.shuffle(order)
            for label, kind in order:
                proc = runners[label]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(f"{kind} {max(1, args.calls // args.rounds)}\n")
                proc.stdin.flush()
                for metric, value in zip(metrics, proc.stdout.readline().split(), strict=True):
                    key = (metric, label, kind)
                    got[key] = min(got.get(key, float("inf")), float(value))
        for key, value in got.items():
            results.setdefault(key, []).append(value)
        line = [f"block {b + 1:3}:"]
        line += [f"{name(*c)} {got['wall', *c]:.2f}/{got['cpu', *c]:.2f}" for c in cells]
        for num, den, _goal in RATIOS:
            for label, _ in builds:
                if ("wall", label, num) not in got or ("wall", ref, den) not in got:
                    continue
                rs = []
                for metric in metrics:
                    r = got[metric, label, num] / got[metric, ref, den]
                    ratios.setdefault((metric, label, num, den), []).append(r)
                    rs.append(f"{r:.3f}")
                line.append(f"{name(label, num)}/{den} {'/'.join(rs)}")
        print("  ".join(line), flush=True)
    for proc in runners.values():
        assert proc.stdin is not None
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError("a block runner failed")
    load1 = os.getloadavg()
    print(f"\n(each block: wall/cpu µs per round trip; ratios wall/cpu)\n\nµs per round trip "
          f"over {args.blocks} blocks (load average {load0[0]:.1f} at the start, "
          f"{load1[0]:.1f} at the end); cpu = both processes' CPU time\n")
    print("| cell | wall min | wall median | cpu min | cpu median |\n|---|---:|---:|---:|---:|")
    for c in cells:
        w, u = results["wall", *c], results["cpu", *c]
        print(f"| {name(*c)} | {min(w):.2f} | {statistics.median(w):.2f} | {min(u):.2f} "
              f"| {statistics.median(u):.2f} |")
    print("\nRatios, taken per block (min and median over the blocks)\n")
    print("| ratio | wall min | wall median | cpu min | cpu median | goal (on the wall median) |"
          "\n|---|---:|---:|---:|---:|---|")
    goals = {(num, den): goal for num, den, goal in RATIOS}
    for (metric, label, num, den), w in ratios.items():
        if metric != "wall":
            continue
        u = ratios["cpu", label, num, den]
        goal = goals[num, den]
        med = statistics.median(w)
        verdict = "" if goal is None else f"≤ {goal}: {'met' if med <= goal else 'not met'}"
        print(f"| {name(label, num)} / {den} | {min(w):.3f} | {med:.3f} | {min(u):.3f} "
              f"| {statistics.median(u):.3f} | {verdict} |")
    if args.json:
        print(json.dumps({f"{metric} {name(label, kind)}": statistics.median(v)
                          for (metric, label, kind), v in results.items()}))

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs per cell; the best is shown (as timeit does: other jobs on"
                             " the machine only ever add time)")
    parser.add_argument("--typed", action="store_true",
                        help="only ipc, ipc-async and ipc+fd round trips, pinned; one JSON line "
                             "of the best run per cell, in µs")
    parser.add_argument("--only-rt", action="store_true",
                        help="only the round-trip table, pinned (no one-way or memfd runs)")
    parser.add_argument("--blocks", type=int, metavar="N",
                        help="the goals' measurement: N interleaved blocks of every cell "
                             "(see --calls, --size, --kinds, --against, --cpu)")
    parser.add_argument("--calls", type=int, default=2000, help="round trips per cell per block")
    parser.add_argument("--rounds", type=int, default=10,
                        help="rounds per block: every cell runs calls/rounds round trips per "
                             "round, and its best round is the block's value")
    parser.add_argument("--size", type=int, default=64, help="payload bytes (blocks)")
    parser.add_argument("--kinds", default=",".join(BLOCK_KINDS),
                        help=f"cells of each block, from {', '.join(BLOCK_KINDS)}")
    parser.add_argument("--against", action="append", default=[], metavar="LABEL=PYTHON",
                        help="also time the ipc cells with another build's interpreter (e.g. "
                             "base=/path/to/checkout/.venv/bin/python), interleaved")
    parser.add_argument("--cpu", type=int, default=None,
                        help="pin every process of the run to this CPU (default: unpinned)")
    parser.add_argument("--seed", type=int, default=1, help="the blocks' shuffle")
    parser.add_argument("--json", action="store_true", help="also one JSON line of the cells")
    parser.add_argument("--block-runner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    if not set(args.kinds) <= set(BLOCK_KINDS):
        parser.error(f"--kinds: choose from {', '.join(BLOCK_KINDS)}")
    if args.block_runner:
        block_runner(args.size, args.kinds)
        return
    if args.blocks:
        interleaved(args)
        return
    scale = 0.2 if args.quick else 1.0
    cpu = min(os.sched_getaffinity(0))
    if args.typed:
        typed_round_trips(cpu, args.repeat, scale)
        return
    all_cpus = os.sched_getaffinity(0)
    print(f"python {sys.version.split()[0]}, msgspec {msgspec.__version__}, "
          f"{os.cpu_count()} CPUs, pinned runs use CPU {cpu}\n")
    print(f"Round trip, µs per call, best of {args.repeat} (lower is better); "
          "ratios: ipc / raw and ipc / mp-pickle")
    header = (f"{'mode':9} {'size':7} " + " ".join(f"{k:>9}" for k in KINDS)
              + f" {'ipc/raw':>8} {'ipc/pkl':>8}")
    print(header)
    print("-" * len(header))
    modes: tuple[tuple[str, int | None], ...] = (("pinned", cpu), ("unpinned", None))
    if args.only_rt:
        modes = modes[:1]
    for mode, mode_cpu in modes:
        pinned(mode_cpu)
        for label, size in SIZES.items():
            data = os.urandom(size)
            n = int((5000 if size <= 4096 else 1000) * scale)
            runs: dict[str, list[float]] = {k: [] for k in KINDS}
            for _ in range(args.repeat):  # interleaved, so drift hits every column alike
                runs["raw"].append(rt_raw(data, n, mode_cpu))
                runs["ipc"].append(rt_ipc(data, n, mode_cpu))
                runs["ipc-async"].append(rt_ipc_async(data, n, mode_cpu))
                runs["ipc+fd"].append(rt_ipc(data, n, mode_cpu, with_fd=True))
                runs["mp-bytes"].append(rt_mp(data, n, mode_cpu, pickle=False))
                runs["mp-pickle"].append(rt_mp(data, n, mode_cpu, pickle=True))
            row = {k: min(v) for k, v in runs.items()}
            print(f"{mode:9} {label:7} " + " ".join(f"{v:9.1f}" for v in row.values())
                  + f" {row['ipc'] / row['raw']:8.2f} {row['ipc'] / row['mp-pickle']:8.2f}",
                  flush=True)
        os.sched_setaffinity(0, all_cpus)
    print(f"(load average {os.getloadavg()[0]:.1f})")
    if args.only_rt:
        return
    print("\nOne-way 64 B messages per second, child → parent (higher is better; best run)")
    n = int(100_000 * scale)
    for mode, mode_cpu in (("pinned", cpu), ("unpinned", None)):
        pinned(mode_cpu)
        raw = max(oneway_raw(n, mode_cpu) for _ in range(args.repeat))
        blocking = max(oneway_ipc(n, mode_cpu, use_async=False) for _ in range(args.repeat))
        aio = max(oneway_ipc(n, mode_cpu, use_async=True) for _ in range(args.repeat))
        print(f"{mode:9} raw {raw:>10,.0f}/s   ipc (blocking receiver) {blocking:>10,.0f}/s   "
              f"ipc (asyncio receiver) {aio:>10,.0f}/s", flush=True)
        os.sched_setaffinity(0, all_cpus)
    print("\n1 GiB through a sealed memfd: parent writes it, seals, sends the fd; the child")
    print("maps it read-only and reads every byte in place. Baselines: the same in one process.")
    for mode, mode_cpu in (("pinned", cpu), ("unpinned", None)):
        pinned(mode_cpu)
        r = memfd_gib(mode_cpu)
        print(f"{mode:9} write: memfd {r['fill_gbs']:.2f} GB/s vs fresh anon memory "
              f"{r['fresh_gbs']:.2f} GB/s | read: child in place {r['read_gbs']:.2f} GB/s vs "
              f"in-process {r['scan_gbs']:.2f} GB/s | seal+send+map+reply {r['handoff_ms']:.2f} ms"
              f" | end to end {r['total_gbs']:.2f} GB/s", flush=True)
        os.sched_setaffinity(0, all_cpus)


if __name__ == "__main__":
    main()

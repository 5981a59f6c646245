"""Broker benchmark: brokered open vs direct open, brokered connect vs direct, in one run.

A forked child times its own calls: first with no filter (direct), then under a
seccomp filter that sends open/openat/openat2/creat/connect to user-notify,
answered by the parent's TransparentBroker (transparent.serve): an open a rule
names (the supervisor opens it and installs the fd), an open no rule names
(answered CONTINUE: the notification round trip alone), and a connect to a
TCP server on 127.0.0.1 the parent runs (the supervisor connects its own
socket and installs it). Rounds are interleaved and the best round of each row
counts, so load elsewhere hits every row alike. Numbers are microseconds per
call (open+close, connect+close), measured inside the child. The same open loop
then runs in a program under `warden run` (default profile): the file bound in
(direct), brokered with --broker-read, and bound in while the broker names
another path (CONTINUE).

    .venv/bin/python bench/bench_broker.py [--rounds 3] [--opens 2000] [--connects 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pyseccomp  # noqa: E402

from warden.supervisor.broker import transparent  # noqa: E402
from warden.supervisor.broker.addresses import AddressRule  # noqa: E402
from warden.supervisor.broker.paths import PathRule  # noqa: E402
from warden.supervisor.broker.policy import Policy  # noqa: E402
from warden.supervisor.sandbox import _sys  # noqa: E402
from warden.supervisor.sandbox.seccomp import PreparedFilter  # noqa: E402


def _bpf() -> bytes:
    f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in transparent.brokered_syscalls():
        f.add_rule(pyseccomp.NOTIFY, name)
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def _opens(path: str, n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        os.close(os.open(path, os.O_RDONLY))
    return (time.perf_counter_ns() - t0) / n / 1000


def _connects(port: int, n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        s.close()
    return (time.perf_counter_ns() - t0) / n / 1000


def _round(policy: Policy, bpf: bytes, brokered: str, unnamed: str, port: int,
           opens: int, connects: int) -> dict[str, float]:
    prepared = PreparedFilter(bpf, listener=True)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: direct first, then the same calls under the broker
        code = 1
        try:
            ours.close()
            os.close(r)
            out = {"direct open": _opens(brokered, opens),
                   "direct connect": _connects(port, connects)}
            _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1)
            fd = prepared.load()
            socket.send_fds(theirs, [b"L"], [fd])
            os.close(fd)
            out["brokered open"] = _opens(brokered, opens)
            out["unnamed open (CONTINUE)"] = _opens(unnamed, opens)
            out["brokered connect"] = _connects(port, connects)
            os.write(w, json.dumps(out).encode())
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    os.close(w)
    _msg, fds, _f, _a = socket.recv_fds(ours, 8, 1)
    ours.close()
    broker = transparent.TransparentBroker(fds[0], policy)
    try:
        transparent.serve(broker, fds[0])
    finally:
        broker.close()
        os.close(fds[0])
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        return dict(json.loads(f.read()))


_LOOP = """
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter_ns()
for _ in range(n):
    os.close(os.open(path, os.O_RDONLY))
print((time.perf_counter_ns() - t0) / n / 1000)
"""


def _warden_run(data: str, opens: int) -> dict[str, float]:
    """The same open loop in a program under `warden run` (default profile): the file
    bound in (direct: the profile allows openat, no broker), brokered with
    --broker-read (outside every bind), and bound in while --broker-read names
    another path (the broker's CONTINUE round trip)."""
    import subprocess

    file = os.path.join(data, "file")
    warden = [sys.executable, "-m", "warden", "run", "-q"]
    py = ["/usr/bin/python3", "-I", "-S", "-c", _LOOP]
    runs = {"warden run direct open": [f"--ro-bind={data}:/in", "--", *py, "/in/file"],
            "warden run brokered open": [f"--broker-read={file}", "--", *py, file],
            "warden run unnamed open (CONTINUE)": [f"--ro-bind={data}:/in",
                                                   f"--broker-read={file}", "--", *py,
                                                   "/in/file"]}
    out = {}
    for name, args in runs.items():
        done = subprocess.run([*warden, *args, str(opens)], capture_output=True, text=True,
                              check=True, timeout=600)
        out[name] = float(done.stdout.strip())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--opens", type=int, default=2000)
    parser.add_argument("--connects", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    port = lsock.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            if select.select([lsock], [], [], 0.1)[0]:
                lsock.accept()[0].close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "data")
        os.mkdir(data)
        brokered = os.path.join(data, "file")
        unnamed = os.path.join(d, "elsewhere")
        for p in (brokered, unnamed):
            with open(p, "w") as f:
                f.write("x")
        bpf = _bpf()
        best: dict[str, float] = {}
        with Policy.build("bench", paths=[PathRule.read(data)],
                          addresses=[AddressRule("127.0.0.1", port)]) as policy:
            for _ in range(args.rounds):
                got = _round(policy, bpf, brokered, unnamed, port, args.opens, args.connects)
                got.update(_warden_run(data, args.opens))
                for k, v in got.items():
                    best[k] = min(v, best.get(k, v))
    stop.set()
    t.join()
    lsock.close()
    if args.json:
        print(json.dumps(best, indent=2))
        return
    print("| call | direct µs | brokered µs | ratio |")
    print("|---|---:|---:|---:|")
    rows = [("open + close", best["direct open"], best["brokered open"]),
            ("open + close, no rule names it (CONTINUE)", best["direct open"],
             best["unnamed open (CONTINUE)"]),
            ("connect 127.0.0.1 + close", best["direct connect"], best["brokered connect"]),
            ("warden run: open + close (default profile; direct: the file bound in)",
             best["warden run direct open"], best["warden run brokered open"]),
            ("warden run: open + close, no rule names it (CONTINUE)",
             best["warden run direct open"], best["warden run unnamed open (CONTINUE)"])]
    for name, direct, brokered_us in rows:
        print(f"| {name} | {direct:.1f} | {brokered_us:.1f} | {brokered_us / direct:.1f}x |")


if __name__ == "__main__":
    main()

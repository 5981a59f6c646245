"""atheris harness for the frame decoder: any input must decode or raise BadMessage/CutOff.

Run through scripts/fuzz-ipc (which seeds a corpus with valid frames). Usage:
    python tests/ipc/fuzz/fuzz_decoder.py [--seeds DIR] [libFuzzer flags...]
"""

from __future__ import annotations

import contextlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)

import atheris  # noqa: E402

with atheris.instrument_imports(include=["warden.ipc"]):
    from warden import ipc
    from warden.ipc.session import Session

from tests.ipc.ifaces import Circle, Color, Point, Service, Staged  # noqa: E402

GRANTED = frozenset({"alloc"})


def session(serve: type[ipc.Interface]) -> Session:
    return Session(peer="fuzz", serve=serve, remote=serve, granted=GRANTED,
                   limits=ipc.DEFAULT_LIMITS)


def one_input(data: bytes) -> None:
    if not data:
        return
    serve = Staged if data[0] & 1 else Service
    s = session(serve)
    # Pretend a call to every method is pending, so replies reach the typed result decoders.
    for i, spec in enumerate(serve.__ipc_methods__.values(), start=1):
        s.pending[i] = spec
    with contextlib.suppress(ipc.BadMessage, ipc.CutOff):
        s.decode(data[1:], [])


def seeds() -> list[bytes]:
    c = Session(peer="seed", serve=None, remote=Service, granted=GRANTED,
                limits=ipc.DEFAULT_LIMITS)
    m = Service.__ipc_methods__
    out = [
        c.encode_request(m["echo"], (b"hello",), {})[0],
        c.encode_request(m["alloc"], (512,), {})[0],
        c.encode_request(m["norm"], (Point(1.0, 2.0, 3.0),), {})[0],
        c.encode_request(m["area"], (Circle(2.0),), {})[0],
        c.encode_request(m["mix"], ("n", Color.RED, "r", (1, 2, 3), ["a"]), {})[0],
        c.encode_request(m["log"], ("line",), {})[0],
        c.encode_request(m["whoami"], (), {})[0],
    ]
    return [b"\x00" + f for f in out]


def main() -> None:
    args = sys.argv[:]
    if "--seeds" in args:
        i = args.index("--seeds")
        directory = args[i + 1]
        del args[i : i + 2]
        os.makedirs(directory, exist_ok=True)
        for n, frame in enumerate(seeds()):
            with open(os.path.join(directory, f"seed-{n}"), "wb") as f:
                f.write(frame)
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

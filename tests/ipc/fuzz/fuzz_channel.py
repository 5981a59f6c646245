"""atheris harness for what a hostile peer reaches: a real SEQPACKET socket pair, frame
sequences, descriptors attached, the frame reader and the session state across frames.

Each input is a script of up to 8 frames. Every frame carries bytes (often a valid
frame with a few bytes changed) and 0-11 descriptors of assorted kinds (pipes, a
memfd, a socket, a directory, /dev/null); the script may end by hanging up. The
trusted side reads with ipc's own FrameReader and decodes with one Session, as a
served channel does. The properties, checked after every input:

- reading and decoding only ever succeed or raise BadMessage / CutOff;
- after a BadMessage or CutOff nothing more is read (the channel is dead);
- no descriptor outlives the input: every fd the peer sent is closed, whether its
  frame was valid (the decoded handles are closed) or not (the reader or the session
  closed them), and the trusted side holds exactly the fds it held before.

Run through scripts/fuzz-ipc (FUZZ_TARGET=channel); tests/ipc/test_ipc_fuzz.py runs a
short bounded run of it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)

import atheris  # noqa: E402

with atheris.instrument_imports(include=["warden.ipc"]):
    from warden import ipc
    from warden.ipc.channel import FrameReader, send_frame
    from warden.ipc.session import Session

from tests.ipc.fuzz.fuzz_decoder import GRANTED, seeds  # noqa: E402
from tests.ipc.ifaces import Service, Staged  # noqa: E402

LIMITS = ipc.Limits(max_frame_bytes=4096, max_fds_held=16)


def _more_seeds() -> list[bytes]:
    """Valid frames of the methods that take descriptors, and of the staged protocol."""
    out = []
    svc = Session(peer="seed", serve=None, remote=Service, granted=GRANTED,
                  limits=ipc.DEFAULT_LIMITS)
    m = Service.__ipc_methods__
    r, w = os.pipe()
    try:
        for name, args in (("read_file", (ipc.ReadFile(os.dup(r)),)),
                           ("write_file", (ipc.WriteFile(os.dup(w)), b"x")),
                           ("list_dir", (ipc.Directory(os.open("/", os.O_RDONLY)),))):
            data, fds, _rid = svc.encode_request(m[name], args, {})
            out.append(data)
            for fd in fds:
                os.close(fd)
    finally:
        os.close(r)
        os.close(w)
    staged = Session(peer="seed", serve=None, remote=Staged, granted=GRANTED,
                     limits=ipc.DEFAULT_LIMITS)
    sm = Staged.__ipc_methods__
    out += [staged.encode_request(sm["hello"], (1,), {})[0],
            staged.encode_request(sm["work"], (7,), {})[0],
            staged.encode_request(sm["shutdown"], (), {})[0]]
    return out


SEEDS = [s[1:] for s in seeds()] + _more_seeds()


def _fds_of_kind(kind: int) -> list[int]:
    """Descriptors a hostile peer might attach; the test closes its own copies."""
    if kind == 0:
        r, w = os.pipe()
        return [r, w]
    if kind == 1:
        return [os.memfd_create("fuzz", os.MFD_CLOEXEC)]
    if kind == 2:
        a, b = socket.socketpair()
        return [a.detach(), b.detach()]
    if kind == 3:
        return [os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    return [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)]


def _frame_bytes(fdp: atheris.FuzzedDataProvider) -> bytes:
    how = fdp.ConsumeIntInRange(0, 3)
    if how == 0:  # a valid frame with some bytes changed
        data = bytearray(SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)])
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            if data:
                data[fdp.ConsumeIntInRange(0, len(data) - 1)] = fdp.ConsumeInt(1) & 0xFF
        return bytes(data)
    if how == 1:  # a valid frame, unchanged (state changes across the sequence)
        return SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)]
    if how == 2:  # at or over the cap
        return b"\x94" * (LIMITS.max_frame_bytes + fdp.ConsumeIntInRange(-1, 64))
    return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))


def _close_decoded(value: object) -> None:
    """Close every handle a decoded frame holds (a handler would own them)."""
    if isinstance(value, tuple | list):
        for v in value:
            _close_decoded(v)
    elif hasattr(value, "close") and not isinstance(value, str | bytes):
        with contextlib.suppress(Exception):
            value.close()  # type: ignore[attr-defined]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    before = set(os.listdir("/proc/self/fd"))
    trusted, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        peer.setblocking(False)
        for _ in range(fdp.ConsumeIntInRange(1, 8)):
            frame = _frame_bytes(fdp)
            fds: list[int] = []
            for _ in range(fdp.ConsumeIntInRange(0, 11) if fdp.ConsumeBool() else 0):
                fds += _fds_of_kind(fdp.ConsumeIntInRange(0, 4))
            try:
                send_frame(peer, frame, fds)
            except OSError:
                pass  # too large for the kernel, or the queue is full: not sent
            finally:
                for fd in fds:
                    os.close(fd)
        if fdp.ConsumeBool():
            peer.close()
        serve = Staged if fdp.ConsumeBool() else Service
        session = Session(peer="fuzz", serve=serve, remote=serve, granted=GRANTED,
                          limits=LIMITS)
        for i, spec in enumerate(serve.__ipc_methods__.values(), start=1):
            session.pending[i] = spec  # replies reach the typed result decoders too
        trusted.setblocking(False)
        reader = FrameReader(trusted, LIMITS, "fuzz")
        while True:
            try:
                got = reader.read()
            except BlockingIOError:
                break
            except (ipc.BadMessage, ipc.CutOff):
                break  # the channel is dead: nothing more is read
            if got is None:
                break
            frame_view, frame_fds = got
            try:
                event = session.decode(frame_view, frame_fds)
            except (ipc.BadMessage, ipc.CutOff):
                break
            _close_decoded(event[3])
            del event
    finally:
        trusted.close()
        if peer.fileno() >= 0:
            peer.close()
    after = set(os.listdir("/proc/self/fd"))
    if after != before:
        raise AssertionError(f"descriptors leaked: {sorted(after - before)}, "
                             f"closed: {sorted(before - after)}")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

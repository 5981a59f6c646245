"""`warden run`'s guard on fd 3: the first invalid frame kills the child, with ipc's reason."""

from __future__ import annotations

import select

import msgspec
import pytest

from tests.sandbox.sandbox_util import PY, collect, start
from warden.supervisor.channel_guard import ChannelGuard
from warden.supervisor.sandbox import Outcome


def _guarded(code: str) -> tuple[Outcome, str]:
    box, out, err = start([PY, "-I", "-S", "-c", code])
    assert box.channel is not None
    guard = ChannelGuard(box.channel)
    reason = None
    while reason is None and guard.open:
        select.select([guard.fileno()], [], [], 10)
        reason = guard.check()
    assert reason is not None
    box.kill(Outcome.BAD_MESSAGE, reason)
    st = collect(box, out, err).status
    return st.outcome, st.reason


@pytest.mark.parametrize("payload", [b"\xc1 not msgpack", b"\x93\x00\x01"])
def test_malformed_frames_kill_with_bad_message(payload: bytes) -> None:
    outcome, reason = _guarded(f"import os, time; os.write(3, {payload!r}); time.sleep(30)")
    assert outcome is Outcome.BAD_MESSAGE
    assert reason.startswith("invalid envelope: ")


def test_an_empty_frame_is_not_mistaken_for_the_end_of_the_stream() -> None:
    outcome, reason = _guarded("import socket, time; s = socket.socket(fileno=3); s.send(b''); "
                               "time.sleep(30)")
    assert outcome is Outcome.BAD_MESSAGE
    assert reason == "empty frame", reason


def test_a_well_formed_call_to_nothing_is_refused_too() -> None:
    frame = msgspec.msgpack.encode([0, 12345, 1, None])
    outcome, reason = _guarded(f"import os, time; os.write(3, {frame!r}); time.sleep(30)")
    assert outcome is Outcome.BAD_MESSAGE
    assert reason == "method id 12345 is not served (warden run serves no interface)"


def test_an_oversized_frame_is_refused_by_the_frame_reader() -> None:
    outcome, reason = _guarded("import os, socket, time\n"
                               "s = socket.socket(fileno=3)\n"
                               "s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)\n"
                               "s.send(b'x' * (200 << 10)); time.sleep(30)")
    assert outcome is Outcome.BAD_MESSAGE
    assert "cap" in reason, reason


def test_closing_the_channel_is_not_a_bad_message() -> None:
    box, out, err = start([PY, "-I", "-S", "-c", "import os; os.close(3)"])
    assert box.channel is not None
    guard = ChannelGuard(box.channel)
    select.select([guard.fileno()], [], [], 10)
    assert guard.check() is None
    assert not guard.open
    assert collect(box, out, err).status.outcome is Outcome.OK

"""What a hostile peer can put in the records the trusted side keeps and logs about it.

A BadMessage's `field` and a RemoteError's text end up in the supervisor's events and log
lines: the peer must not choose the field of its own bad message, nor write raw control
characters (a forged log line, a terminal escape) through either.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from tests.ipc.helpers import HANG_GUARD, call, frame, mid, open_fds, run_hostile
from tests.ipc.ifaces import Worker
from warden import ipc
from warden.ipc.wire import KIND_ERROR

FORGED = "x` - at `$.size\n2026-12-01 WARNING all workers healthy"


def test_a_peer_cannot_choose_the_field_of_its_bad_message() -> None:
    """msgspec quotes an unknown field's name as sent and names no path at the top level:
    a name ending in " - at `$...`" read as that path, newline and all."""
    out = run_hostile(lambda: [(call("alloc", 1, {"size": 1, FORGED: 1}), [])],
                      granted={"alloc"})
    assert isinstance(out.reason, ipc.BadMessage)
    assert out.reason.field == "$"
    assert "\n" not in out.reason.reason and "\n" not in str(out.reason)


def test_a_nested_unknown_field_keeps_its_real_path() -> None:
    out = run_hostile(lambda: [(call("norm", 1, {"p": {"x": 1.0, "y": 1.0, "z": 1.0,
                                                         FORGED: 1}}), [])])
    assert isinstance(out.reason, ipc.BadMessage)
    assert out.reason.field == "$.p"


def test_a_field_is_always_a_path() -> None:
    """Whatever a peer sends, a reported field is `$` followed by names and indices."""
    for payload in ({"size": 1, "`": 1}, {"size": 1, "a` - at `$.b c": 1},
                    {"size": 1, "a` - at `$\x1b[2J": 1}):
        out = run_hostile(lambda p=payload: [(call("alloc", 1, p), [])], granted={"alloc"})
        assert isinstance(out.reason, ipc.BadMessage)
        assert out.reason.field == "$", payload


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("boom\n2026-12-01 INFO worker-7 ok", "boom\\n2026-12-01 INFO worker-7 ok"),
        ("\x1b[2Jcleared", "\\x1b[2Jcleared"),
        ("plain words", "plain words"),
    ],
)
def test_a_remote_error_shows_the_peers_words_escaped(sent: str, shown: str) -> None:
    """The trusted side calls the peer; the peer's error reply becomes a RemoteError the
    embedder logs: its text is escaped like any reason quoting a peer."""

    async def scenario() -> str:
        before = open_fds()
        ours, evil = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="evil", remote=Worker)
        pending = asyncio.ensure_future(ch.remote.square(3))
        await asyncio.sleep(0)
        got = await asyncio.get_running_loop().run_in_executor(None, evil.recv, 4096)
        rid = msgspec.msgpack.decode(got)[2]
        evil.send(frame(KIND_ERROR, mid("square", "test.Worker"), rid, {"message": sent}))
        with pytest.raises(ipc.RemoteError) as err:
            await asyncio.wait_for(pending, HANG_GUARD)
        assert not ch.closed  # an error reply is a valid answer
        ch.close()
        evil.close()
        assert open_fds() == before
        return str(err.value)

    assert asyncio.run(scenario()) == shown

"""Envelope and ancillary attacks from a raw peer: each frame is refused before its method,
with every fd it carried closed, and the trusted side keeps serving the others."""

from __future__ import annotations

import array
import asyncio
import os
import socket
import struct
from pathlib import Path

import msgspec
import pytest

from tests.ipc.helpers import HANG_GUARD, call, frame, mid, open_fds, run_hostile, tmpfile
from tests.ipc.ifaces import Service
from tests.ipc.impls import ServiceImpl, StagedImpl
from warden import ipc
from warden.ipc.wire import KIND_ERROR


@pytest.mark.parametrize("with_fd", [False, True])
def test_credentials_in_a_frame_are_refused(tmp_path: Path, with_fd: bool) -> None:
    """SCM_CREDENTIALS only arrive where SO_PASSCRED is on; should an embedder turn it on,
    a frame carrying them is refused (with an fd beside them: the control data no longer
    fits, MSG_CTRUNC), and the fd closed."""

    async def scenario() -> ipc.ChannelError | None:
        before = open_fds()
        ours, evil = ipc.channel_pair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        ch = ipc.attach(ours, peer_id="evil", serve=ServiceImpl())
        creds = struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
        anc = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)]
        fd = tmpfile(tmp_path, "f")
        if with_fd:
            anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes()))
        evil.sendmsg([call("read_file" if with_fd else "whoami", 1, {})], anc)
        os.close(fd)
        reason = await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        evil.close()
        assert open_fds() == before
        return reason

    reason = asyncio.run(scenario())
    assert isinstance(reason, ipc.BadMessage)
    assert reason.reason == (
        "control data truncated (more than 8 fds, or other ancillary data)" if with_fd else
        f"unexpected ancillary data (level {socket.SOL_SOCKET}, type {socket.SCM_CREDENTIALS})"
    )


def test_fds_on_a_call_refused_by_its_state_are_closed(tmp_path: Path) -> None:
    out = run_hostile(
        lambda: [(call("work", 1, {"n": 1}, iface="test.Staged"), [tmpfile(tmp_path, "f")])],
        serve=StagedImpl(),
    )
    assert isinstance(out.reason, ipc.BadMessage)
    assert out.reason.reason == "work not valid in state 'new' (valid in ready)"


def test_fds_on_a_call_without_its_permission_are_closed(tmp_path: Path) -> None:
    out = run_hostile(lambda: [(call("alloc", 1, {"size": 1}), [tmpfile(tmp_path, "f")])])
    assert isinstance(out.reason, ipc.BadMessage)
    assert out.reason.reason == "permission 'alloc' not granted"


def test_the_most_fds_a_frame_may_carry_in_a_truncated_control_message(tmp_path: Path) -> None:
    """More fds than the control buffer holds: the kernel installs what fits (MSG_CTRUNC)
    and the trusted side closes every one of them."""
    limits = ipc.Limits(max_fds_per_frame=2)
    out = run_hostile(
        lambda: [(call("read_file", 1, {}), [tmpfile(tmp_path, f"f{i}") for i in range(40)])],
        limits=limits,
    )
    assert isinstance(out.reason, ipc.BadMessage)
    assert out.reason.reason.startswith("control data truncated")


def test_an_error_reply_carrying_fds_is_refused(tmp_path: Path) -> None:
    async def scenario() -> ipc.ChannelError | None:
        before = open_fds()
        ours, evil = ipc.channel_pair()
        ch = ipc.attach(ours, peer_id="evil", remote=Service)
        pending = asyncio.ensure_future(ch.remote.open_data())
        await asyncio.sleep(0)
        got = await asyncio.get_running_loop().run_in_executor(None, evil.recv, 4096)
        rid = msgspec.msgpack.decode(got)[2]
        fd = tmpfile(tmp_path, "f")
        evil.sendmsg([frame(KIND_ERROR, mid("open_data"), rid, {"message": "no"})],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        os.close(fd)
        reason = await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)
        with pytest.raises(ipc.ChannelClosed):
            await pending
        evil.close()
        assert open_fds() == before
        return reason

    reason = asyncio.run(scenario())
    assert isinstance(reason, ipc.BadMessage)
    assert reason.reason == "error reply with 1 fds (expected none)"
    assert reason.method == "open_data"

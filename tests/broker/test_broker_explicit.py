"""The explicit broker over a real ipc channel with a forked child: allowed requests
get their handle, refused ones a declared error (the child goes on), malformed ones
are bad messages."""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker.harness import HANG_GUARD, open_fds
from warden import ipc
from warden.supervisor.broker.addresses import AddressRule
from warden.supervisor.broker.explicit import Broker, BrokerService, refusal_errno
from warden.supervisor.broker.paths import PathRule
from warden.supervisor.broker.policy import AuditRecord, Policy

GREETING = b"greetings, explicitly"


@pytest.fixture
def server() -> Iterator[int]:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if select.select([lsock], [], [], 0.1)[0]:
                conn, _ = lsock.accept()
                with conn:
                    conn.sendall(GREETING)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield lsock.getsockname()[1]
    stop.set()
    t.join()
    lsock.close()


def serve_child(policy: Policy, body: Callable[[ipc.Channel], list[Any]],
                granted: set[str] | None = None,
                validate: bool = True) -> tuple[list[Any], ipc.ChannelError | None]:
    """Fork a child that calls the broker through `body`; what it reported (one-way
    `log` is not declared, so it writes JSON to a pipe) and how the channel ended."""
    import json

    ours, theirs = ipc.channel_pair()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            os.close(r)
            # validate=False: a hostile child sends what the declaration forbids
            with ipc.connect(theirs, remote=Broker, validate_outgoing=validate) as c:
                data = json.dumps(body(c)).encode()
            os.write(w, data)
            code = 0
        except BaseException as e:
            os.write(w, json.dumps([f"child raised {e!r}"]).encode())
        finally:
            os._exit(code)
    theirs.close()
    os.close(w)

    async def main() -> ipc.ChannelError | None:
        ch = ipc.attach(ours, peer_id="sb-explicit", serve=BrokerService(policy, connect_timeout=5),
                        granted=granted if granted is not None else {"broker.open",
                                                                     "broker.connect"},
                        pid=pid)
        return await asyncio.wait_for(ch.wait_closed(), HANG_GUARD)

    reason = asyncio.run(main())
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        out = json.loads(f.read() or b"[]")
    return out, reason


def attempt(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ipc.RemoteError as e:
        return errno.errorcode[refusal_errno(e)]


def test_open_and_connect_by_policy(tmp_path: Path, server: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("input")
    (data / "link").symlink_to("/etc/passwd")
    os.mkfifo(data / "fifo")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    records: list[AuditRecord] = []
    port = server

    def body(c: ipc.Channel) -> list[Any]:
        def read(path: str) -> str:
            with c.remote.open_read(path) as h, h.open() as f:
                return str(f.read().decode())

        def write(path: str, text: str, **kw: bool) -> str:
            with c.remote.open_write(path, **kw) as h:
                os.write(h.fileno(), text.encode())
            return "ok"

        def connect(host: str, p: int) -> str:
            with c.remote.connect(host, p).socket() as s:
                return s.recv(100).decode()

        return [
            attempt(lambda: read(f"{data}/in.txt")),
            attempt(lambda: read(f"{data}/../out/x")),
            attempt(lambda: read(f"{data}/link")),
            attempt(lambda: read(f"{data}/fifo")),
            attempt(lambda: read(f"{data}/missing")),
            attempt(lambda: read("/etc/passwd")),
            attempt(lambda: write(f"{data}/in.txt", "no")),
            attempt(lambda: write(f"{out_dir}/made.txt", "made", create=True)),
            attempt(lambda: write(f"{out_dir}/made.txt", "again", create=True, truncate=True)),
            attempt(lambda: connect("127.0.0.1", port)),
            attempt(lambda: connect("localhost", port)),
            attempt(lambda: connect("127.0.0.2", port)),
            attempt(lambda: connect("::1", port)),
            attempt(lambda: connect("::ffff:127.0.0.1", port)),
            attempt(lambda: connect("::ffff:127.0.0.2", port)),
            attempt(lambda: connect("no-such-host.invalid", port)),
            attempt(lambda: read(f"{data}/in.txt")),
        ]

    with Policy.build("sb-explicit", paths=[PathRule.read(str(data)), PathRule.write(str(out_dir))],
                      addresses=[AddressRule.parse(f"127.0.0.1:{port}")],
                      on_record=records.append) as pol:
        before = open_fds()
        got, reason = serve_child(pol, body)
        assert open_fds() == before
    assert got == ["input", "EACCES", "EACCES", "EACCES", "ENOENT", "EACCES", "EACCES", "ok",
                   "ok", GREETING.decode(), GREETING.decode(), "EACCES", "EACCES",
                   GREETING.decode(), "EACCES", "ENOENT", "input"]
    assert reason is None  # refusals are replies: the channel ended only when the child did
    assert (out_dir / "made.txt").read_text() == "again"
    assert [r.decision for r in records].count("allowed") == 7
    refused = [r for r in records if r.decision == "refused"]
    assert all(r.via == "explicit" and r.sandbox == "sb-explicit" for r in records)
    assert refused[0].request == f"{data}/../out/x"
    assert refused[0].rule == f"{data} (read)"


def test_a_name_resolving_to_a_refused_address_is_refused(server: int) -> None:
    def body(c: ipc.Channel) -> list[Any]:
        return [attempt(lambda: c.remote.connect("localhost", server).socket().close())]

    with Policy.build("sb", addresses=[AddressRule.parse(f"127.0.0.2:{server}")]) as pol:
        got, _ = serve_child(pol, body)
    assert got == ["EACCES"]


@pytest.mark.parametrize("path", ["/x/" + "a" * 65536, "relative", "/nul\0byte", "/" + "b" * 4095])
def test_malformed_paths_are_bad_messages(tmp_path: Path, path: str) -> None:
    def body(c: ipc.Channel) -> list[Any]:
        try:
            c.remote.open_read(path)
        except ipc.ChannelClosed:
            return ["closed"]
        except ipc.ChannelError as e:
            return [type(e).__name__]
        return ["answered"]

    with Policy.build("sb", paths=[PathRule.read(str(tmp_path))]) as pol:
        got, reason = serve_child(pol, body, validate=False)
    assert isinstance(reason, ipc.BadMessage), got
    assert reason.method == "open_read"
    assert got[0] in ("closed", "ChannelClosed", "PeerError")


def test_without_the_permission_a_call_is_a_bad_message(tmp_path: Path) -> None:
    def body(c: ipc.Channel) -> list[Any]:
        try:
            c.remote.connect("127.0.0.1", 80)
        except ipc.ChannelError as e:
            return [type(e).__name__]
        return ["answered"]

    with Policy.build("sb", paths=[PathRule.read(str(tmp_path))]) as pol:
        _got, reason = serve_child(pol, body, granted={"broker.open"}, validate=False)
    assert isinstance(reason, ipc.BadMessage)

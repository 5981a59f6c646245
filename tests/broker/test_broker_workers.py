"""The explicit broker as the Supervisor offers it: `spawn(..., broker=BrokerRules)` and
`pool(..., broker=...)`, reached by the worker through warden.supervisor.worker.

Each worker's requests are decided by its own policy and audited with its own id;
a refused request is an error reply (the worker goes on); a malformed frame on the
broker channel is a bad message (the worker is killed, the reason recorded); a
worker hammering its broker is bounded. Honest workers run alongside every attack
and every one of their calls must come back right."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

import pytest

from tests.broker.broker_workers import Brokered
from tests.broker.web import GREETING as HOST_GREETING
from tests.broker.web import greeter
from tests.supervisor.util import METHODS, eventually, run
from warden import ipc
from warden.supervisor import Supervisor, WorkerDied
from warden.supervisor.broker.offer import BrokerDecision, BrokerRules
from warden.supervisor.errors import InvalidArgument
from warden.supervisor.events import BadMessageEvent, Event
from warden.supervisor.pool import RestartPolicy
from warden.supervisor.sandbox import Outcome

TARGET = "tests.broker.broker_workers:BrokeredImpl"
PRELOAD = ("tests.broker.broker_workers",)
PROFILE = "python-worker"
GREETING = HOST_GREETING.decode()
FAST = RestartPolicy("on-failure", backoff=0.01, max_backoff=0.05, crash_loop_limit=50)


def tree(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir()
    (d / "in.txt").write_text(f"input of {name}")
    os.chmod(root, 0o755)
    os.chmod(d, 0o755)
    return d


def sup(**kw: object) -> Supervisor:
    return Supervisor(start_method="zygote", zygote_preload=PRELOAD, **kw)  # type: ignore[arg-type]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("method", METHODS)
def test_every_start_method_reaches_its_broker(method: str, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    data = tree(tmp_path, "data")
    out = tree(tmp_path, "out")
    caplog.set_level(logging.INFO, logger="warden.broker")

    async def main() -> None:
        with greeter() as port:
            async with sup(zygote=method == "zygote") as s:
                events: list[Event] = []
                s.subscribe(events.append)
                rules = BrokerRules.parse(read=[str(data)], write=[str(out)],
                                          connect=[f"127.0.0.1:{port}"])
                w = await s.spawn(Brokered, TARGET, profile=PROFILE, start_method=method,
                                  worker_id=f"bw-{method}", broker=rules)
                assert await w.remote.read(f"{data}/in.txt") == "input of data"
                assert await w.remote.write(f"{data}/new.txt", "x") == "EACCES"
                assert await w.remote.write(f"{out}/r.txt", "result") == "ok"
                assert (out / "r.txt").read_text() == "result"
                assert await w.remote.fetch("127.0.0.1", port) == GREETING
                assert await w.remote.fetch("127.0.0.1", port + 1 if port < 65535 else 1) \
                    == "EACCES"
                plain = await s.spawn(Brokered, TARGET, profile=PROFILE, start_method=method)
                assert await plain.remote.has_broker() is False
                assert w.running and plain.running
        decisions = [e for e in events if isinstance(e, BrokerDecision)]
        assert [(e.worker_id, e.record.sandbox, e.record.kind, e.record.decision)
                for e in decisions] == [
            (f"bw-{method}", f"bw-{method}", kind, decision) for kind, decision in
            [("open", "allowed"), ("open", "refused"), ("open", "allowed"),
             ("connect", "allowed"), ("connect", "refused")]]
        assert decisions[1].record.rule == f"{data} (read)"
        assert decisions[0].pid == w.pid

    run(main())
    logged = [r.getMessage() for r in caplog.records if r.name == "warden.broker"]
    assert any(f"by bw-{method}: \"{data}/new.txt\" refused (EACCES)" in m for m in logged)


def test_rules_are_checked_before_a_process_exists(tmp_path: Path) -> None:
    async def main() -> None:
        async with sup() as s:
            with pytest.raises(InvalidArgument, match="broker"):
                await s.spawn(Brokered, TARGET, profile=PROFILE,
                              broker=BrokerRules.parse(read=[str(tmp_path / "missing")]))
            with pytest.raises(ValueError, match="HOST:PORT"):
                BrokerRules.parse(connect=["no port"])
            with pytest.raises(InvalidArgument, match="transparent broker"):
                await s.spawn_program(["/bin/true"], broker=BrokerRules())
            assert not s.workers
    run(main())


def test_attacks_alongside_honest_workers(tmp_path: Path) -> None:
    mine = tree(tmp_path, "mine")
    theirs = tree(tmp_path, "theirs")
    (mine / "out-link").symlink_to(theirs / "in.txt")
    (mine / "etc-link").symlink_to("/etc/passwd")
    os.mkfifo(mine / "fifo")
    honest_dir = tree(tmp_path, "honest")

    async def main() -> None:
        with greeter() as port:
            async with sup(zygote_warm=0) as s:
                events: list[Event] = []
                s.subscribe(events.append)
                honest = await s.pool(Brokered, TARGET, size=4, name="honest", restart=FAST,
                                      profile=PROFILE,
                                      broker=BrokerRules.parse(read=[str(honest_dir)],
                                                               connect=[f"127.0.0.1:{port}"]))
                hostile = await s.pool(Brokered, TARGET, size=2, name="hostile", restart=FAST,
                                       profile=PROFILE,
                                       broker=BrokerRules.parse(
                                           read=[str(mine)],
                                           connect=[f"127.0.0.1:{port}", "127.0.0.2:7"]))
                other = await s.spawn(Brokered, TARGET, profile=PROFILE, worker_id="other",
                                      broker=BrokerRules.parse(read=[str(theirs)]))
                # Every worker holds the same fds (channels, pidfd, listener, broker): at
                # full strength again after the attacks, the supervisor holds no more.
                base = open_fds()
                stop = asyncio.Event()
                honest_calls = 0

                async def keep_honest() -> None:
                    nonlocal honest_calls
                    while not stop.is_set():
                        got = await asyncio.gather(
                            honest.call("read", f"{honest_dir}/in.txt"),
                            honest.call("fetch", "127.0.0.1", port))
                        assert got == ["input of honest", GREETING]
                        honest_calls += 2

                background = asyncio.ensure_future(keep_honest())

                # Asking outside its policy: an error reply, and the worker goes on.
                refused = [f"{mine}/../theirs/in.txt", f"{mine}/out-link", f"{mine}/etc-link",
                           f"{mine}/fifo", f"{mine}", "/proc/self/root/etc/passwd",
                           f"/proc/self/root{mine}/in.txt", f"{theirs}/in.txt",
                           f"{mine}/./../mine/../../" + "../" * 50 + "etc/passwd"]
                for path in refused:
                    assert await hostile.call("read", path) == "EACCES", path
                assert await hostile.call("write", f"{mine}/in.txt", "overwrite") == "EACCES"
                for host, p in [("127.0.0.2", port), ("::ffff:127.0.0.2", port),
                                ("::ffff:10.0.0.1", port), ("127.0.0.1", 1),
                                ("::1", port), ("localhost", 1), ("169.254.169.254", 80)]:
                    assert await hostile.call("fetch", host, p) == "EACCES", (host, p)
                # A name is judged by what it resolves to: localhost is 127.0.0.1, which
                # no rule allows on port 7 (a rule names the port for another address).
                assert await hostile.call("fetch", "localhost", 7) == "EACCES"
                # ...and allowed on `port` only when every address it has is allowed.
                local = {i[4][0] for i in socket.getaddrinfo("localhost", port,
                                                             type=socket.SOCK_STREAM)}
                assert await hostile.call("fetch", "localhost", port) == (
                    GREETING if local == {"127.0.0.1"} else "EACCES")
                # The mapped form of the allowed address is that address.
                assert await hostile.call("fetch", "::ffff:127.0.0.1", port) == GREETING
                assert await other.remote.read(f"{theirs}/in.txt") == "input of theirs"
                assert (mine / "in.txt").read_text() == "input of mine"
                assert await hostile.call("read", f"{mine}/in.txt") == "input of mine"

                # Malformed frames on the broker channel: bad messages, killed, recorded.
                for how in ("garbage", "relative", "nul", "port", "fd"):
                    with pytest.raises(WorkerDied):
                        await hostile.call("malformed", how)
                    assert await hostile.full()

                # Hammering: pipelined opens without reading, then a hoard of fds.
                for n in (8, 400):
                    # Cut off past 16 in flight: killed, or (racing the kill) told so
                    # by its own handler's failure.
                    with contextlib.suppress(WorkerDied, ipc.RemoteError):
                        await hostile.call("hammer", f"{mine}/in.txt", n, deadline=60)
                    assert await hostile.full()
                with contextlib.suppress(WorkerDied, ipc.RemoteError):
                    await hostile.call("hoard", f"{mine}/in.txt", 5000, deadline=60)
                assert await hostile.full()

                await eventually(lambda: honest_calls >= 40, "honest calls ran alongside")
                stop.set()
                await background
                assert honest.restarts == 0 and await honest.full()
                assert len(hostile.workers) == 2
                assert await hostile.call("read", f"{mine}/in.txt") == "input of mine"

                bad = [e for e in events if isinstance(e, BadMessageEvent)]
                assert len(bad) == 5 + sum(1 for e in bad if "hammer" in e.reason)
                assert {e.interface for e in bad} == {"warden.Broker"}
                assert all(e.worker_id.startswith("hostile-") for e in bad)
                reasons = " | ".join(e.reason for e in bad)
                assert "path" in reasons and "port" in reasons
                audited = {e.record.sandbox for e in events if isinstance(e, BrokerDecision)}
                assert audited <= {*(f"honest-{i}" for i in range(1, 5)),
                                   *(f"hostile-{i}" for i in range(1, 40)), "other"}
                killed = [e for e in events if getattr(e, "status", None) is not None
                          and e.worker_id.startswith("hostile-")]
                assert all(e.status.outcome in (Outcome.BAD_MESSAGE, Outcome.KILLED)
                           for e in killed)  # type: ignore[attr-defined]
                await eventually(lambda: open_fds() <= base, "no fd left behind")

    run(main())

"""`warden serve` served in-process: a pool whose workers open a brokered file
([pools.NAME.broker]), the service's idle timeout, and the admin role's
warden.restart (and a lower role calling it: a bad message)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.broker.broker_workers import Brokered
from tests.interpreter import PYTHON, python_env
from tests.supervisor.service_helpers import Holder
from tests.supervisor.util import WORKTREE
from warden import ipc
from warden.supervisor import service
from warden.supervisor.serve import query_status, serve
from warden.supervisor.serve_config import ConfigError, load_config

T = TypeVar("T")
ME = os.geteuid()
_serial = iter(range(1 << 30))

CONFIG = """
[supervisor]
start_method = "zygote"
preload = ["tests.broker.broker_workers", "tests.supervisor.service_helpers"]
status_socket = "{status}"

[pools.files]
interface = "tests.broker.broker_workers:Brokered"
module = "tests.broker.broker_workers:BrokeredImpl"
profile = "python-worker"
count = 2

[pools.files.broker]
read = ["{data}"]

[pools.h]
interface = "tests.supervisor.service_helpers:Holder"
module = "tests.supervisor.service_helpers:HolderImpl"
count = 2
call_timeout = 60

[service]
abstract = "{address}"
idle_timeout = {idle}
max_connections_per_uid = 4

[roles.me]
uids = [{uid}]
pools = ["files", "h"]
admin = {admin}
"""


def config(tmp_path: Path, *, admin: bool = True, idle: float = 60) -> tuple[str, str, Path]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "in.txt").write_text("brokered input")
    for p in (tmp_path, data):
        os.chmod(p, 0o755)
    address = f"warden-admin-test-{os.getpid()}-{next(_serial)}"
    status = tmp_path / f"status-{address}.sock"
    path = tmp_path / f"{address}.toml"
    path.write_text(CONFIG.format(status=status, data=data, address=address, idle=idle,
                                  uid=ME, admin=str(admin).lower()))
    return str(path), "@" + address, status


def served(path: str, body: Callable[[str], Any]) -> Any:
    """Serve `path` in this process while `body(address)` runs in a thread; then SIGTERM."""
    cfg = load_config(path)
    assert cfg.service is not None

    async def main() -> Any:
        ready = asyncio.Event()
        server = asyncio.ensure_future(serve(cfg, ready=ready))
        await asyncio.wait_for(ready.wait(), 120)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, body,
                                                                    cfg.service.address)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            assert await asyncio.wait_for(server, 120) == 0

    return asyncio.run(main())


def until(check: Callable[[], T], what: str) -> T:
    end = time.monotonic() + 60  # a bound only so a broken server fails, not hangs
    while not (got := check()):
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)
    return got


def test_a_serve_pool_opens_brokered_files(tmp_path: Path) -> None:
    path, _address, _status = config(tmp_path)
    data = tmp_path / "data"

    def body(address: str) -> None:
        with service.connect(address, pools={"files": Brokered}) as svc:
            files = svc.pool("files")
            assert [files.read(f"{data}/in.txt") for _ in range(4)] == ["brokered input"] * 4
            assert files.read("/etc/passwd") == "EACCES"
            assert files.write(f"{data}/new.txt", "no") == "EACCES"
            assert files.read(f"{data}/../data/in.txt") == "EACCES"

    served(path, body)
    assert not (data / "new.txt").exists()


def test_serve_broker_config_errors_point_at_the_rule(tmp_path: Path) -> None:
    path, _a, _s = config(tmp_path)
    text = Path(path).read_text()
    Path(path).write_text(text.replace('read = ["', 'connect = ["nowhere"]\nread = ["'))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "pools.files.broker.connect[0]: broker address 'nowhere': expected HOST:PORT" \
        in str(e.value)
    assert e.value.line == text.splitlines().index("[pools.files.broker]") + 2
    Path(path).write_text(text.replace('read = ["', 'colour = "red"\nread = ["'))
    with pytest.raises(ConfigError, match=r"pools\.files\.broker\.colour: unknown key"):
        load_config(path)
    Path(path).write_text(text.replace('read = ["', 'read = ["relative", "'))
    with pytest.raises(ConfigError, match=r"broker\.read\[0\]: broker path 'relative': "
                                          "not an absolute path"):
        load_config(path)


def test_an_idle_connection_is_disconnected_and_recorded(tmp_path: Path) -> None:
    path, _address, status = config(tmp_path, idle=0.3)

    def body(address: str) -> None:
        idle = [service.open_socket(address) for _ in range(4)]  # the uid's every slot
        try:
            for s in idle:  # each one ends from the server's side: end of stream
                s.settimeout(60)
                assert s.recv(100) == b""
        finally:
            for s in idle:
                s.close()
        snap = until(lambda: (q := query_status(str(status)))["service"]["connections"] == 0
                     and q, "every idle connection closed")
        assert snap["service"]["idle_closed"] == 4
        recs = [r for r in snap["service"]["records"] if r["event"] == "idle"]
        assert len(recs) == 4 and all(r["uid"] == ME for r in recs)
        assert "idle_timeout" in recs[0]["reason"]
        # The slots are free again; a client that calls (however slowly) keeps its own.
        with service.connect(address, pools={"h": Holder}) as svc, \
                open(tmp_path / "data" / "in.txt", "rb") as f:
            assert svc.pool("h").hold(f.fileno(), 900) == len("brokered input")
            assert svc.pool("h").square(7) == 49

    served(path, body)


def test_admin_restart_replaces_the_workers_and_fails_calls_in_flight(tmp_path: Path) -> None:
    path, _address, status = config(tmp_path)

    def body(address: str) -> None:
        import concurrent.futures

        before = query_status(str(status))["pools"]["h"]["workers"]
        old = {w["pid"] for w in before.values()}

        def hold() -> Any:
            with service.connect(address, pools={"h": Holder}) as svc, \
                    open(tmp_path / "data" / "in.txt", "rb") as f:
                try:
                    return svc.pool("h").hold(f.fileno(), 30_000)
                except Exception as e:
                    return e

        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            held = [ex.submit(hold) for _ in range(2)]
            until(lambda: query_status(str(status))["pools"]["h"]["idle"] == 0,
                  "both calls reached a worker")
            with service.connect(address, pools={"h": Holder}, admin=True) as admin:
                assert admin.restart("h") == 2
                with pytest.raises(ipc.RemoteError, match="has no pool named 'nope'"):
                    admin.restart("nope")
                assert admin.pool("h").square(5) == 25  # an error reply: still connected
            errors = [f.result(timeout=60) for f in held]
        for e in errors:
            assert isinstance(e, Exception)
            assert "restarted by uid" in str(e) and "warden.restart" in str(e), e
        def renewed() -> dict[str, Any] | None:
            q = query_status(str(status))
            pids = {w["pid"] for w in q["pools"]["h"]["workers"].values()}
            return q if q["pools"]["h"]["alive"] == 2 and not pids & old else None

        snap = until(renewed, "the pool back to full strength, with new workers")
        recs = [r for r in snap["service"]["records"] if r["event"] == "restart"]
        assert recs and recs[-1]["pool"] == "h" and recs[-1]["workers"] == 2
        with service.connect(address, pools={"h": Holder}) as svc:
            assert svc.pool("h").square(12) == 144
        # The command line reaches it too (warden call asks describe for its parameters).
        r = subprocess.run([PYTHON, "-m", "warden", "call", address, "warden.restart", '"h"',
                            "--json"], env=python_env(WORKTREE), cwd=WORKTREE,
                           capture_output=True, text=True, timeout=120)
        assert (r.returncode, r.stdout) == (0, "2\n"), r.stderr

    served(path, body)


def test_a_lower_role_calling_restart_is_a_bad_message(tmp_path: Path) -> None:
    path, _address, status = config(tmp_path, admin=False)

    def body(address: str) -> None:
        with service.connect(address, pools={"h": Holder}, admin=True) as svc:
            assert svc.pool("h").square(3) == 9
            with pytest.raises(service.ServiceRefused):
                svc.restart("h")
        snap = query_status(str(status))
        bad = [r for r in snap["service"]["records"] if r["event"] == "bad message"]
        assert bad and bad[-1]["role"] == "me"
        assert snap["pools"]["h"]["alive"] == 2
        assert not [r for r in snap["service"]["records"] if r["event"] == "restart"]

    served(path, body)

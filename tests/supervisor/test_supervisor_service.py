"""The named-socket service: roles by the kernel's credentials, a lower role calling a
higher method, forged SCM_CREDENTIALS, a flood of connections, a client killed mid-call,
and `warden call`. Real server processes, real client processes (as root, a second uid
through setpriv)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.interpreter import PYTHON, python_env
from tests.supervisor.util import WORKTREE
from warden.errors import EXIT_SETUP
from warden.ipc.wire import method_id
from warden.supervisor.serve import query_status
from warden.supervisor.serve_config import ConfigError, load_config
from warden.supervisor.service import WIRE_NAME

ROOT = os.geteuid() == 0
OTHER = 4242  # the second uid, as root
ME = os.geteuid()
ENV = python_env(WORKTREE)
TRUST = ["--server-uid", str(ME)]  # the servers run as the test's uid
_serial = itertools.count()

CONFIG = """
[supervisor]
start_method = "zygote"
preload = ["tests.supervisor.service_helpers"]
status_socket = "{status}"

[pools.h]
interface = "tests.supervisor.service_helpers:Holder"
module = "tests.supervisor.service_helpers:HolderImpl"
count = 1
call_timeout = 30

[service]
{service}

{roles}
"""


@dataclass
class Server:
    proc: subprocess.Popen[str]
    address: str
    status_path: str
    stderr: str = ""

    def status(self) -> dict[str, Any]:
        return query_status(self.status_path)


def _until(check: Any, what: str, limit: float = 60) -> None:
    # A bound only so a broken server fails the test instead of hanging it.
    end = time.monotonic() + limit
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def start(roles: str, service: str = "") -> Server:
        address = f"@warden-test-{os.getpid()}-{next(_serial)}"
        status = tmp_path / f"status-{len(servers)}.sock"
        service = service or f'abstract = "{address[1:]}"'
        if "socket =" in service:
            address = service.split('"')[1]
        path = tmp_path / f"serve-{len(servers)}.toml"
        path.write_text(CONFIG.format(status=status, service=service, roles=roles))
        proc = subprocess.Popen([PYTHON, "-m", "warden", "serve", "-v", str(path)], env=ENV,
                                cwd=WORKTREE, stderr=subprocess.PIPE, text=True)
        srv = Server(proc, address, str(status))
        servers.append(srv)
        _until(lambda: status.exists() or proc.poll() is not None, "the server is up")
        assert proc.poll() is None, proc.communicate()[1]
        return srv

    yield start
    for srv in servers:
        if srv.proc.poll() is None:
            srv.proc.send_signal(signal.SIGTERM)
        try:
            _out, srv.stderr = srv.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.communicate()


def stop(srv: Server) -> str:
    srv.proc.send_signal(signal.SIGTERM)
    _out, srv.stderr = srv.proc.communicate(timeout=60)
    assert srv.proc.returncode == 0, srv.stderr
    return srv.stderr


def as_uid(uid: int | None) -> list[str]:
    if uid is None or uid == ME:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def client(kind: str, *args: str, uid: int | None = None) -> Any:
    r = subprocess.run([*as_uid(uid), PYTHON, "-m", "tests.supervisor.service_helpers",
                        kind, *args], env=ENV, cwd=WORKTREE, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def warden_call(*args: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*as_uid(uid), PYTHON, "-m", "warden", "call", *args], env=ENV,
                          cwd=WORKTREE, capture_output=True, text=True, timeout=120)


def warm_up(srv: Server) -> None:
    """One call first: what the server opens once, on its first connection, is not the
    cost of a client."""
    r = warden_call(srv.address, "h.square", "2", "--json")
    assert (r.returncode, r.stdout) == (0, "4\n"), r.stderr


READER_ADMIN = f"""
[roles.admin]
uids = [0]
pools = ["h"]
admin = true

[roles.reader]
uids = [{OTHER if ROOT else ME}]
pools = ["h"]
"""
READER_ONLY = f"""
[roles.reader]
uids = [{ME}]
pools = ["h"]
"""


@pytest.mark.skipif(not ROOT, reason="needs root (a second uid, through setpriv)")
def test_two_uids_get_different_roles(serve: Any) -> None:
    srv = serve(READER_ADMIN)
    (mine,) = client("describe", srv.address)
    (theirs,) = client("describe", srv.address, uid=OTHER)
    assert mine == ["h.hold", "h.square", "warden.describe", "warden.restart", "warden.status"]
    assert theirs == ["h.hold", "h.square", "warden.describe"]
    r = warden_call(srv.address, "warden.status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["service"]["accepted"] >= 2
    r = warden_call(srv.address, "h.square", "7", "--json", *TRUST, uid=OTHER)
    assert (r.returncode, r.stdout) == (0, "49\n"), r.stderr
    r = warden_call(srv.address, "warden.status", *TRUST, uid=OTHER)
    assert r.returncode == 1 and "may not call 'warden.status'" in r.stderr


def test_no_matching_role_is_refused_and_recorded(serve: Any) -> None:
    srv = serve(f"[roles.nobody]\nuids = [{ME + 1}]\npools = [\"h\"]\n")
    r = warden_call(srv.address, "h.square", "3")
    assert r.returncode == 1 and "closed the connection" in r.stderr, r.stderr
    svc = srv.status()["service"]
    assert svc["refused"] == {"no_role": 1} and svc["connections"] == 0
    assert svc["records"][-1]["uid"] == ME and "no role" in svc["records"][-1]["reason"]


def test_lower_role_calling_higher_method_is_disconnected_and_recorded(serve: Any) -> None:
    """A reader whose client declares the admin interface: its first call works, its
    warden.status (an id outside the reader's interface) is a bad message: disconnected,
    recorded with the uid and the method id; other clients carry on."""
    srv = serve(READER_ADMIN if ROOT else READER_ONLY)
    lower = OTHER if ROOT else ME
    square, refused = client("higher", srv.address, uid=lower)
    assert square == {"square": 25}
    assert "closed the connection during warden.status()" in refused["refused"]
    status_id = f"{method_id(WIRE_NAME, 'warden.status'):#010x}"
    svc = srv.status()["service"]
    (rec,) = [r for r in svc["records"] if r["event"] == "bad message"]
    assert (rec["uid"], rec["role"], rec["method"]) == (lower, "reader", status_id)
    assert svc["connections"] == 0
    r = warden_call(srv.address, "h.square", "4", "--json", *TRUST, uid=lower)
    assert (r.returncode, r.stdout) == (0, "16\n"), r.stderr
    err = stop(srv)
    assert f"bad message: uid={lower}" in err and status_id in err


def test_forged_scm_credentials_are_refused_by_the_kernel(serve: Any) -> None:
    """Without CAP_SYS_ADMIN/CAP_SETUID a client cannot even send credentials of another
    pid or uid: sendmsg fails with EPERM."""
    srv = serve(READER_ADMIN if ROOT else READER_ONLY)
    lower = OTHER if ROOT else ME
    (got,) = client("forge", srv.address, "1", "0", "0", uid=lower)
    assert got == {"sendmsg": 1}  # EPERM
    # Its own credentials pass the kernel, and change nothing either.
    (got,) = client("forge", srv.address, "0", str(lower), str(lower), uid=lower)
    assert got["sendmsg"] in (0, 1)


@pytest.mark.skipif(not ROOT, reason="needs root (a client that may forge credentials)")
def test_forged_scm_credentials_are_ignored_by_the_service(serve: Any) -> None:
    """Root may send any credentials: the kernel passes them, the service (no SO_PASSCRED)
    never receives them, and the connection keeps the role of its SO_PEERCRED."""
    srv = serve(READER_ADMIN)
    (got,) = client("forge", srv.address, "1", str(OTHER), str(OTHER))
    assert got == {"sendmsg": 0,
                   "methods": ["h.hold", "h.square", "warden.describe", "warden.restart",
                               "warden.status"]}
    assert srv.status()["service"]["refused"] == {}


def test_a_flood_of_connections_is_refused_beyond_the_limits(serve: Any) -> None:
    srv = serve(READER_ADMIN if ROOT else READER_ONLY,
                service=f'abstract = "warden-flood-{os.getpid()}"\nbacklog = 16\n'
                "max_connections = 64\nmax_connections_per_uid = 8")
    srv.address = f"@warden-flood-{os.getpid()}"
    flooder = OTHER if ROOT else ME
    warm_up(srv)
    baseline = srv.status()["open_fds"]
    flood = subprocess.Popen([*as_uid(flooder), PYTHON, "-m",
                              "tests.supervisor.service_helpers", "flood", srv.address,
                              "500"], env=ENV, cwd=WORKTREE, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout is not None
        counts = json.loads(flood.stdout.readline())
        assert counts["connected"] + counts["refused"] == 500
        _until(lambda: srv.status()["service"]["refused"].get("max_connections_per_uid", 0)
               + 8 >= counts["connected"], "every connect beyond the limit refused")
        snap = srv.status()
        svc = snap["service"]
        assert svc["per_uid"] == {str(flooder): 8}
        # The flood holds 8 connections: each costs the service its socket and a pidfd.
        assert snap["open_fds"] <= baseline + 8 * 2
        if ROOT:  # an honest client of another uid is served meanwhile
            r = warden_call(srv.address, "h.square", "9", "--json")
            assert (r.returncode, r.stdout) == (0, "81\n"), r.stderr
        else:  # the same uid: refused while its 8 are open
            r = warden_call(srv.address, "h.square", "9", "--json")
            assert r.returncode == 1
    finally:
        assert flood.stdin is not None
        flood.stdin.close()
        flood.wait(timeout=60)
    _until(lambda: srv.status()["service"]["connections"] == 0, "the flood's connections end")
    r = warden_call(srv.address, "h.square", "9", "--json")
    assert (r.returncode, r.stdout) == (0, "81\n"), r.stderr
    assert srv.status()["open_fds"] == baseline


def test_a_client_killed_mid_call_costs_nothing(serve: Any, tmp_path: Path) -> None:
    """SIGKILL while its call runs (holding a file it passed): the connection, its pidfd
    and the client's fd are closed, the worker finishes that call and is free again (not
    killed), and the next client is served."""
    srv = serve(READER_ADMIN if ROOT else READER_ONLY)
    lower = OTHER if ROOT else ME
    data = tmp_path / "data"
    data.write_bytes(b"x" * 1234)
    warm_up(srv)
    baseline = srv.status()
    with open(data, "rb") as f:  # its stdin: the file it passes
        victim = subprocess.Popen([*as_uid(lower), PYTHON, "-m",
                                   "tests.supervisor.service_helpers", "hold",
                                   srv.address, "-", "1500"], env=ENV, cwd=WORKTREE,
                                  stdin=f, stdout=subprocess.PIPE, text=True)
    assert victim.stdout is not None and victim.stdout.readline() == "calling\n"
    _until(lambda: srv.status()["pools"]["h"]["idle"] == 0, "the call runs on the worker")
    assert srv.status()["service"]["connections"] == 1
    victim.kill()
    victim.wait()
    _until(lambda: srv.status()["service"]["connections"] == 0, "the connection closes")
    _until(lambda: srv.status()["pools"]["h"]["idle"] == 1, "the worker is free again")
    after = srv.status()
    assert after["open_fds"] == baseline["open_fds"], (baseline, after)
    pool = after["pools"]["h"]
    assert (pool["restarts"], pool["alive"]) == (0, 1)
    assert list(pool["workers"]) == list(baseline["pools"]["h"]["workers"])
    r = warden_call(srv.address, "h.hold", f"@{data}", "0", "--json")
    assert (r.returncode, r.stdout) == (0, "1234\n"), r.stderr


def test_warden_call_usage_and_refusals(serve: Any, tmp_path: Path) -> None:
    srv = serve(READER_ONLY if not ROOT else READER_ADMIN)
    r = warden_call(srv.address, "h.square", "not-json")
    assert r.returncode == EXIT_SETUP and "not a JSON value" in r.stderr
    r = warden_call(srv.address, "h.hold", "12", "0")
    assert r.returncode == EXIT_SETUP and "give @PATH" in r.stderr
    r = warden_call(srv.address, "h.hold", f"@{tmp_path / 'missing'}", "0")
    assert r.returncode == EXIT_SETUP
    r = warden_call(srv.address, "h.nope")
    assert r.returncode == 1 and "may not call 'h.nope'" in r.stderr
    r = warden_call(srv.address, "--list")
    assert r.returncode == 0 and "h.hold(f: 'ipc.ReadFile', ms: 'Ms') -> 'int'" in r.stdout
    r = warden_call(srv.address, "h.square", '"a string"')  # the service's check
    assert r.returncode == 1 and "closed the connection" in r.stderr
    r = warden_call(str(tmp_path / "nothing.sock"), "h.square", "1")
    assert r.returncode == EXIT_SETUP


def test_service_socket_path_mode_and_cleanup(serve: Any, tmp_path: Path) -> None:
    sock = tmp_path / "svc.sock"
    srv = serve(READER_ONLY, service=f'socket = "{sock}"\nmode = 0o660')
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_uid == ME
    r = warden_call(str(sock), "h.square", "6", "--json")
    assert (r.returncode, r.stdout) == (0, "36\n"), r.stderr
    os.symlink(sock, tmp_path / "link.sock")
    r = warden_call(str(tmp_path / "link.sock"), "h.square", "6")
    assert r.returncode == EXIT_SETUP and "link" in r.stderr
    stop(srv)
    assert not sock.exists()


@pytest.mark.parametrize(("text", "message"), [
    ("[roles.r]\nuids = [1]\npools = [\"h\"]\n", "roles without a [service] section"),
    ("[service]\nabstract = \"x\"\n", "needs at least one [roles.NAME]"),
    ("[service]\n[roles.r]\nuids = [1]\n", "give exactly one of socket"),
    ("[service]\nabstract = \"x\"\n[roles.r]\npools = [\"h\"]\n", "it would match nobody"),
    ("[service]\nabstract = \"x\"\n[roles.r]\nuids = [1]\npools = [\"nope\"]\n",
     "roles.r.pools[0]: no pool named 'nope'"),
    ("[service]\nabstract = \"x\"\nmode = 0o660\ngroup = 0\n[roles.r]\nuids = [1]\n",
     "an abstract socket has no owner or mode"),
    ("[service]\nsocket = \"s\"\nmax_connections = 0\n[roles.r]\nuids = [1]\n",
     "service.max_connections: expected an integer >= 1"),
    ("[service]\nsocket = \"s\"\n[roles.r]\nuids = [1]\ncolour = 1\n",
     "roles.r.colour: unknown key"),
])
def test_service_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(CONFIG.format(status="s", service="", roles="").replace("[service]\n", "")
                    + text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(str(path))


def test_example_config_has_roles() -> None:
    cfg = load_config(os.path.join(WORKTREE, "examples", "thumbnailer", "serve.toml"))
    assert cfg.service is not None
    assert [r.name for r in cfg.service.roles] == ["admin", "reader"]

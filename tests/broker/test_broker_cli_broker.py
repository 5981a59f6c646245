"""`warden run --broker-read/--broker-write/--broker-connect` end to end: an unmodified
python3 in a real sandbox (namespaces, the default profile's filter, seccomp
user-notify) opens a host file outside every bind and fetches a URL from a
server on the host's 127.0.0.1 through the supervisor, and nothing else."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker.web import PAGE, PROGRAM, PY, serving
from tests.interpreter import PYTHON, python_env
from warden.errors import EXIT_SETUP


@pytest.fixture
def web() -> Iterator[tuple[int, int]]:
    """Two servers on the host's 127.0.0.1: the one the policy names, and another."""
    with serving() as named, serving() as other:
        yield named, other


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """data/input.txt (brokered), secret.txt beside data/ (not), and data/link -> it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("brokered input\n")
    (tmp_path / "secret.txt").write_text("host secret\n")
    (data / "link").symlink_to(tmp_path / "secret.txt")
    os.chmod(tmp_path, 0o755)
    return tmp_path


def warden(*args: str, status: Path | None = None) -> tuple[subprocess.CompletedProcess[str],
                                                          dict[str, Any]]:
    extra = ["--json-status", str(status)] if status is not None else []
    r = subprocess.run([PYTHON, "-m", "warden", "run", *extra, *args], capture_output=True,
                       text=True, env=python_env(), timeout=120, check=False)
    st = json.loads(status.read_text()) if status is not None and status.exists() else {}
    return r, st


def _program(paths: list[Path | str], urls: list[str]) -> list[str]:
    return ["--", PY, "-I", "-S", "-c", PROGRAM, ",".join(map(str, paths)), ",".join(urls)]


def test_python3_opens_a_brokered_file_and_fetches_a_url(host: Path, web: tuple[int, int],
                                                         tmp_path: Path) -> None:
    port, _other = web
    path, url = host / "data" / "input.txt", f"http://127.0.0.1:{port}/"
    r, st = warden("--broker-read", str(path), "--broker-connect", f"127.0.0.1:{port}",
                   *_program([path], [url]), status=tmp_path / "st.json")
    assert (r.returncode, r.stdout) == (0, f"open ok brokered input\nfetch ok {PAGE.decode()}\n"), \
        r.stderr
    allowed = [(a["kind"], a["request"], a["rule"]) for a in st["broker"]
               if a["decision"] == "allowed"]
    assert allowed == [("open", str(path), f"{path} (read)"),
                       ("connect", f"127.0.0.1 port {port}/tcp", f"127.0.0.1:{port}/tcp")]
    assert all(a["sandbox"].startswith("warden-run-") and a["via"] == "transparent"
               for a in st["broker"])
    assert st["broker_unnamed"] > 0  # the interpreter's own files: its own calls ran
    assert st["outcome"] == "ok"


def test_without_the_flags_the_same_program_is_refused(host: Path, web: tuple[int, int],
                                                       tmp_path: Path) -> None:
    port, _other = web
    path, url = host / "data" / "input.txt", f"http://127.0.0.1:{port}/"
    r, st = warden(*_program([path], [url]), status=tmp_path / "st.json")
    # The file is not in the sandbox's filesystem; the sandbox's own network
    # namespace holds only its loopback, where nothing listens on that port.
    assert (r.returncode, r.stdout) == (0, "open failed ENOENT\nfetch failed ECONNREFUSED\n"), \
        r.stderr
    assert "broker" not in st


def test_escapes_and_other_ports_are_refused_and_recorded(host: Path, web: tuple[int, int],
                                                          tmp_path: Path) -> None:
    port, other = web
    data = host / "data"
    attempts: list[Path | str] = [data / "link", f"{data}/../secret.txt", host / "secret.txt",
                                  data / "input.txt"]
    r, st = warden("--broker-read", str(data), "--broker-connect", f"127.0.0.1:{port}",
                   *_program(attempts, [f"http://127.0.0.1:{other}/",
                                        f"http://[::ffff:127.0.0.1]:{other}/",
                                        f"http://127.0.0.1:{port}/"]),
                   status=tmp_path / "st.json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "open failed EACCES",   # a link beneath the prefix (no :links)
        "open failed EACCES",   # .. out of the prefix
        "open failed ENOENT",   # no rule names it: the sandbox's own open, which cannot see it
        "open ok brokered input",
        "fetch failed EACCES",  # another port
        "fetch failed EACCES",  # the same, IPv4-mapped
        f"fetch ok {PAGE.decode()}",
    ]
    refused = [(a["kind"], a["request"]) for a in st["broker"] if a["decision"] == "refused"]
    assert refused == [("open", str(data / "link")), ("open", f"{data}/../secret.txt"),
                       ("connect", f"127.0.0.1 port {other}/tcp"),
                       ("connect", f"{ipaddress.ip_address('::ffff:127.0.0.1')} port {other}/tcp")]
    assert all(a["errno"] == 13 for a in st["broker"] if a["decision"] == "refused")
    assert st["outcome"] == "ok"
    # Refusals are logged (warden.broker, WARNING) on warden's stderr.
    assert f'"{data}/../secret.txt" refused (EACCES)' in r.stderr


def test_write_rule_creates_and_a_read_rule_does_not_write(host: Path, tmp_path: Path) -> None:
    out = host / "out"
    out.mkdir()
    code = ("import sys\n"
            "open(sys.argv[1], 'w').write('made inside')\n"
            "try:\n    open(sys.argv[2], 'a')\nexcept PermissionError:\n    print('refused')\n")
    r, st = warden("--broker-write", str(out), "--broker-read", str(host / "data"), "--", PY,
                   "-I", "-S", "-c", code, str(out / "new.txt"), str(host / "data" / "input.txt"),
                   status=tmp_path / "st.json")
    assert (r.returncode, r.stdout) == (0, "refused\n"), r.stderr
    assert (out / "new.txt").read_text() == "made inside"
    assert (host / "data" / "input.txt").read_text() == "brokered input\n"
    decided = {(a["request"], a["decision"]) for a in st["broker"]}
    assert decided == {(str(out / "new.txt"), "allowed"),
                       (str(host / "data" / "input.txt"), "refused")}


def test_a_call_the_broker_does_not_answer_is_still_a_violation(host: Path,
                                                                tmp_path: Path) -> None:
    r, st = warden("--broker-read", str(host / "data"), "--", PY, "-I", "-S", "-c",
                   # sysfs(2): unlisted in default, so a kill (the broker answers opens only)
                   "import ctypes; ctypes.CDLL(None).syscall(139, 3)", status=tmp_path / "st.json")
    assert r.returncode == 128 + signal.SIGSYS
    assert (st["outcome"], st["violation"]["syscall"]) == ("seccomp_violation", "sysfs")


@pytest.mark.parametrize(("args", "message"), [
    (["--broker-read", "relative/path"],
     "--broker-read relative/path: broker path 'relative/path': not an absolute path"),
    (["--broker-write", "/no/such/dir"], "--broker-read"),  # replaced below
    (["--broker-connect", "127.0.0.1"],
     "--broker-connect 127.0.0.1: broker address '127.0.0.1': expected HOST:PORT"),
    (["--profile", "python-worker", "--broker-read", "/etc"],
     "--broker-read: profile python-worker does not allow open (errno EACCES)"),
    (["--share-net", "--broker-connect", "127.0.0.1:80"],
     "--broker-connect: the sandbox shares the host's network (--share-net), where the "
     "program could reach any address without connect()"),
])
def test_bad_values_exit_125_naming_the_option(args: list[str], message: str) -> None:
    if args[0] == "--broker-write":
        message = "--broker-write: broker path /no/such/dir"
    r, _st = warden(*args, "--", "/bin/true")
    assert r.returncode == EXIT_SETUP
    assert message in r.stderr, r.stderr


def test_a_second_sandbox_carries_on_beside_an_attacked_one(host: Path,
                                                            web: tuple[int, int]) -> None:
    """Through the API: two brokered sandboxes in one supervisor; one makes refused
    opens and connects and ends, the other is then served as before."""
    from warden.profiles import load_profile
    from warden.supervisor.broker import AddressRule, AuditRecord, PathRule, Policy, wiring
    from warden.supervisor.sandbox import build_spec, spawn

    port, other = web
    names = wiring.calls(paths=True, addresses=True)
    prof = load_profile("default")
    prof = dataclasses.replace(prof, seccomp=wiring.filter_policy(prof.seccomp, names, "default"))
    records: dict[str, list[AuditRecord]] = {"a": [], "b": []}
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    waiting = ("import sys, urllib.request\nsys.stdin.readline()\n"
               "print(open(sys.argv[1]).read().strip(), "
               "urllib.request.urlopen(sys.argv[2], timeout=20).read().decode())\n")
    spec_b = build_spec([PY, "-I", "-S", "-c", waiting, str(host / "data" / "input.txt"),
                         f"http://127.0.0.1:{port}/"], prof, stdio=(r_in, w_out, 2),
                        channel=False)
    spec_a = build_spec([PY, "-I", "-S", "-c", PROGRAM,
                         f"{host}/data/link,{host}/data/../secret.txt",
                         f"http://127.0.0.1:{other}/"], prof, channel=False,
                        stdio=(0, os.open(os.devnull, os.O_WRONLY), 2))
    boxes = {}
    for name, spec in (("b", spec_b), ("a", spec_a)):
        pol = Policy.build(name, paths=[PathRule.read(str(host / "data"))],
                           addresses=[AddressRule.parse(f"127.0.0.1:{port}")],
                           on_record=records[name].append)
        boxes[name] = box = spawn(spec)
        wiring.attach(box, pol, names)
    os.close(r_in)
    os.close(w_out)
    st_a = boxes["a"].wait(60)
    assert st_a is not None and st_a.outcome.value == "ok"
    assert [r.decision for r in records["a"] if r.decision != "unnamed"] == ["refused"] * 3
    # B has been waiting all along, its interpreter's calls answered meanwhile.
    os.write(w_in, b"go\n")
    os.close(w_in)
    st_b = boxes["b"].wait(60)
    with os.fdopen(r_out) as f:
        out = f.read()
    assert st_b is not None and st_b.outcome.value == "ok", st_b
    assert out == f"brokered input {PAGE.decode()}\n"
    assert all(r.sandbox == "b" for r in records["b"])
    with socket.create_connection(("127.0.0.1", port)):
        pass  # the host side is unharmed too


# Brokered opens interrupted by the program's own 20 µs timer: a notification the
# kernel withdraws before the supervisor reads it is no violation while the broker
# shares the listener; the program goes on, and every open it got back is its file.
_TIMER_OPENS = """
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
path = sys.argv[1].encode()
signal.signal(signal.SIGALRM, lambda *a: None)
signal.setitimer(signal.ITIMER_REAL, 0.00002, 0.00002)
got = eintr = 0
for _ in range(1000):
    fd = libc.open(path, os.O_RDONLY)
    if fd >= 0:
        got += os.read(fd, 100) == b"brokered input\\n"
        os.close(fd)
    elif ctypes.get_errno() == 4:
        eintr += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print("survived", got + eintr, flush=True)
"""


def test_brokered_calls_the_program_interrupts_are_no_violation(host: Path,
                                                                tmp_path: Path) -> None:
    path = host / "data" / "input.txt"
    r, st = warden("--broker-read", str(path), "--", PY, "-I", "-S", "-c", _TIMER_OPENS,
                   str(path), status=tmp_path / "st.json")
    assert (r.returncode, r.stdout) == (0, "survived 1000\n"), r.stderr
    assert st["outcome"] == "ok"
    # With io_uring the withdrawn calls are seen, and let go: the status says so.
    # Without it they are not seen at all (its own weakened note).
    assert any("broker shares the listener" in w or "io_uring is unavailable" in w
               for w in st["weakened"])

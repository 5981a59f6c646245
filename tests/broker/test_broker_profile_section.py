"""A profile's [broker] section (read, write, connect) under `warden run --profile FILE`:
the --broker-* options' rules, in their syntax, checked by `warden profile check`
with file:line:column, merged through extends, added to the options' own. An
unmodified python3 reads a brokered host file and fetches a page from a server
on the host's 127.0.0.1; the same profile without the section gets neither."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker.web import PAGE, PROGRAM, PY, serving
from tests.interpreter import PYTHON, python_env
from warden.errors import EXIT_SETUP
from warden.profiles import ProfileError, load_profile
from warden.profiles.model import Broker, BrokerAddress, BrokerPath


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """data/input.txt and other/more.txt, host files outside every bind."""
    for name, text in (("data/input.txt", "brokered input\n"), ("other/more.txt", "more\n")):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    os.chmod(tmp_path, 0o755)
    return tmp_path


@pytest.fixture
def port() -> Iterator[int]:
    with serving() as p:
        yield p


def profile(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


def warden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "warden", *args], capture_output=True, text=True,
                          env=python_env(), timeout=120, check=False)


def run(prof: Path, paths: list[Path], urls: list[str], *flags: str,
        status: Path | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    extra = ["--json-status", str(status)] if status is not None else []
    r = warden("run", "-p", str(prof), *extra, *flags, "--", PY, "-I", "-S", "-c", PROGRAM,
               ",".join(map(str, paths)), ",".join(urls))
    st = json.loads(status.read_text()) if status is not None and status.exists() else {}
    return r, st


def test_checked_then_run_it_brokers_exactly_what_it_names(host: Path, port: int,
                                                          tmp_path: Path) -> None:
    path, url = host / "data" / "input.txt", f"http://127.0.0.1:{port}/"
    prof = profile(tmp_path, "brokered.toml",
                   f'extends = "default"\n[broker]\nread = ["{host / "data"}"]\n'
                   f'connect = ["127.0.0.1:{port}"]\n')
    check = warden("profile", "check", str(prof))
    assert check.returncode == 0, check.stderr
    r, st = run(prof, [path, host / "other" / "more.txt"], [url], status=tmp_path / "st.json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["open ok brokered input",
                                     "open failed ENOENT",  # named by no rule
                                     f"fetch ok {PAGE.decode()}"]
    allowed = [(a["kind"], a["rule"]) for a in st["broker"] if a["decision"] == "allowed"]
    assert allowed == [("open", f"{host / 'data'} (read)"),
                       ("connect", f"127.0.0.1:{port}/tcp")]
    # The same profile without the section: neither the file nor the server.
    plain = profile(tmp_path, "plain.toml", 'extends = "default"\n')
    r, st = run(plain, [path], [url], status=tmp_path / "plain.json")
    assert (r.returncode, r.stdout) == (0, "open failed ENOENT\nfetch failed ECONNREFUSED\n"), \
        r.stderr
    assert "broker" not in st


def test_options_add_to_the_profile_and_extends_merges(host: Path, port: int,
                                                       tmp_path: Path) -> None:
    profile(tmp_path, "base.toml", f'extends = "default"\n[broker]\n'
                                   f'connect = "127.0.0.1:{port}"\n')
    child = profile(tmp_path, "child.toml",
                    f'extends = "base.toml"\n[broker]\nread = ["{host / "data"}"]\n')
    assert load_profile(str(child)).broker == Broker(
        (BrokerPath(str(host / "data")),), (BrokerAddress("127.0.0.1", port, port),))
    paths = [host / "data" / "input.txt", host / "other" / "more.txt"]
    r, _ = run(child, paths, [f"http://127.0.0.1:{port}/"],
               "--broker-read", str(host / "other"))
    assert r.stdout.splitlines() == ["open ok brokered input", "open ok more",
                                     f"fetch ok {PAGE.decode()}"], r.stderr


def test_write_rules_create_and_read_rules_do_not(host: Path, tmp_path: Path) -> None:
    out = host / "out"
    out.mkdir()
    prof = profile(tmp_path, "w.toml", f'extends = "default"\n[broker]\n'
                                       f'write = ["{out}"]\nread = ["{host / "data"}"]\n')
    code = ("import sys\nopen(sys.argv[1], 'w').write('made inside')\n"
            "try:\n    open(sys.argv[2], 'a')\nexcept PermissionError:\n    print('refused')\n")
    r = warden("run", "-q", "-p", str(prof), "--", PY, "-I", "-S", "-c", code,
               str(out / "new.txt"), str(host / "data" / "input.txt"))
    assert (r.returncode, r.stdout) == (0, "refused\n"), r.stderr
    assert (out / "new.txt").read_text() == "made inside"


@pytest.mark.parametrize(("section", "where", "message"), [
    ('read = ["relative/path"]', "3:9", "broker path 'relative/path': not an absolute path"),
    ('write = ["/srv/../etc"]', "3:10", "broker path '/srv/../etc': contains '..'"),
    ('connect = ["127.0.0.1"]', "3:12", "broker address '127.0.0.1': expected "
     "HOST:PORT[-PORT][/tcp|/udp]"),
    ('connect = ["example.org:70000"]', "3:12", "broker address 'example.org:70000/tcp': "
     "ports must be 1..65535"),
    ('connect = ["bad_host!:80"]', "3:12", "broker address 'bad_host!:80/tcp': 'bad_host!' is "
     "neither an IP, a CIDR range nor a host name"),
    ('connect = 80', "3:11", '"broker.connect" must be a list of strings'),
    ('open = ["/srv"]', "3:1", 'unknown key "open" in [broker]'),
])
def test_mistakes_are_refused_by_check_and_run_at_the_line(tmp_path: Path, section: str,
                                                           where: str, message: str) -> None:
    prof = profile(tmp_path, "bad.toml", f'extends = "default"\n[broker]\n{section}\n')
    with pytest.raises(ProfileError) as info:
        load_profile(str(prof))
    e = info.value
    assert (f"{e.line}:{e.column}", e.message[:len(message)]) == (where, message), str(e)
    check = warden("profile", "check", str(prof))
    assert check.returncode == 1 and f"bad.toml:{where}: error: {message}" in check.stderr, \
        check.stderr
    r = warden("run", "-p", str(prof), "--", "/bin/true")
    assert r.returncode == EXIT_SETUP and f"bad.toml:{where}: error: {message}" in r.stderr, \
        r.stderr


def test_what_only_the_host_can_tell_fails_before_the_program_naming_the_profile(
        tmp_path: Path) -> None:
    prof = profile(tmp_path, "gone.toml", f'extends = "default"\n[broker]\n'
                                          f'read = ["{tmp_path / "no-such-dir"}"]\n')
    r = warden("run", "-p", str(prof), "--", "/bin/echo", "ran")
    assert (r.returncode, r.stdout) == (EXIT_SETUP, ""), r.stderr
    assert f"--profile {prof} [broker]: broker path {tmp_path / 'no-such-dir'}" in r.stderr


def test_connect_rules_refuse_the_host_network(tmp_path: Path) -> None:
    prof = profile(tmp_path, "net.toml", 'extends = "default"\n[namespaces]\nnet = false\n'
                                         '[broker]\nconnect = ["127.0.0.1:80"]\n')
    r = warden("run", "-p", str(prof), "--", "/bin/true")
    assert r.returncode == EXIT_SETUP
    assert (f"--profile {prof} [broker]: the sandbox shares the host's network (profile net)"
            in r.stderr), r.stderr


def test_a_profile_that_refuses_open_cannot_carry_the_broker(tmp_path: Path) -> None:
    prof = profile(tmp_path, "worker.toml", f'extends = "python-worker"\n[broker]\n'
                                            f'read = ["{tmp_path}"]\n')
    r = warden("run", "-p", str(prof), "--", "/bin/true")
    assert r.returncode == EXIT_SETUP
    assert f"--profile {prof} [broker]: profile worker does not allow open" in r.stderr, \
        r.stderr


def test_the_api_reads_the_same_rules() -> None:
    """Through the API: wiring.profile_rules gives the broker's rules for a profile."""
    from warden.supervisor.broker import AddressRule, PathRule, wiring

    broker = Broker((BrokerPath("/srv", write=True, links=True), BrokerPath("/in")),
                    (BrokerAddress("::1", 443, 444, "udp"),))
    assert wiring.profile_rules(broker) == (
        [PathRule.parse("/srv:links", write=True), PathRule.parse("/in")],
        [AddressRule.parse("[::1]:443-444/udp")])
    with pytest.raises(ValueError, match="not an absolute path"):
        wiring.profile_rules(Broker((BrokerPath("rel"),)))

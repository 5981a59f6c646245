"""The policy without a child: rule parsing and validation, address checks, path
resolution from the held directory fds, audit records."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
from pathlib import Path

import pytest

from warden.supervisor.broker.addresses import AddressPolicy, AddressRule
from warden.supervisor.broker.paths import OpenRequest, PathRule
from warden.supervisor.broker.policy import AuditRecord, Policy, Refused
from warden.supervisor.sandbox.hostpath import HostPathError


@pytest.mark.parametrize(("text", "host", "low", "high", "proto"), [
    ("127.0.0.1:80", "127.0.0.1", 80, 80, "tcp"),
    ("10.0.0.0/8:8000-8100/udp", "10.0.0.0/8", 8000, 8100, "udp"),
    ("[::1]:443", "::1", 443, 443, "tcp"),
    ("[2001:db8::/32]:53/udp", "2001:db8::/32", 53, 53, "udp"),
    ("example.org:443/tcp", "example.org", 443, 443, "tcp"),
])
def test_address_rules_parse(text: str, host: str, low: int, high: int, proto: str) -> None:
    rule = AddressRule.parse(text)
    assert (rule.host, rule.low, rule.high, rule.protocol) == (host, low, high, proto)
    assert AddressRule.parse(rule.spelled()) == rule


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "::1:80",
                                  "a b:80", "/tmp/sock:1", "h:90-80", "h:80/sctp", "-x:1"])
def test_bad_address_rules_are_refused_in_one_sentence(text: str) -> None:
    with pytest.raises(ValueError, match=r"^broker address"):
        AddressRule.parse(text)


def test_v4_mapped_addresses_are_checked_as_v4() -> None:
    pol = AddressPolicy([AddressRule.parse("127.0.0.1:80"), AddressRule.parse("[::1]:80")])
    ip = ipaddress.ip_address
    assert pol.check(ip("::ffff:127.0.0.1"), 80, "tcp").allowed
    assert not pol.check(ip("::ffff:127.0.0.2"), 80, "tcp").allowed
    assert not pol.check(ip("127.0.0.1"), 81, "tcp").allowed
    assert not pol.check(ip("127.0.0.1"), 80, "udp").allowed
    assert pol.check(ip("::1"), 80, "tcp").allowed
    # a v6 rule over the mapped range is the v4 range it maps
    mapped = AddressPolicy([AddressRule.parse("[::ffff:10.0.0.0/104]:1")])
    assert mapped.check(ip("10.1.2.3"), 1, "tcp").allowed
    assert not mapped.check(ip("11.0.0.1"), 1, "tcp").allowed


def test_every_resolved_address_must_be_allowed() -> None:
    def resolver(host: str) -> list[str]:
        return {"two.test": ["192.0.2.1", "198.51.100.7"], "one.test": ["192.0.2.1"],
                "rule.test": ["192.0.2.1"]}[host]

    pol = AddressPolicy([AddressRule.parse("rule.test:443")], resolver=resolver)
    addrs, decision = pol.resolve("one.test", 443, "tcp")
    assert addrs == [ipaddress.ip_address("192.0.2.1")]
    assert decision.rule == "rule.test:443/tcp"
    with pytest.raises(Refused) as info:
        pol.resolve("two.test", 443, "tcp")
    assert info.value.decision.reason == \
        "two.test resolves to 198.51.100.7: no rule allows 198.51.100.7 port 443/tcp"
    with pytest.raises(Refused) as info:
        pol.resolve("/tmp/unix.sock", 443, "tcp")
    assert info.value.errno == errno.EINVAL


def test_path_rules_are_validated() -> None:
    for bad, match in [("relative", "not an absolute"), ("/a/../b", "'..'"),
                       ("/a\0b", "NUL")]:
        with pytest.raises(ValueError, match=match):
            PathRule.read(bad)
    with pytest.raises(ValueError, match="modes"):
        PathRule("/tmp", frozenset({"execute"}))
    with pytest.raises(ValueError, match="kinds"):
        PathRule("/tmp", kinds=frozenset({"directory"}))


def test_a_rule_through_a_link_or_on_a_fifo_is_refused_when_built(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(HostPathError, match="symbolic link"):
        Policy.build("sb", paths=[PathRule.read(str(tmp_path / "link" / "x"))])
    with pytest.raises(HostPathError, match="FIFO"):
        Policy.build("sb", paths=[PathRule.read(str(tmp_path / "fifo"))])


def test_the_directory_is_the_one_resolved_when_the_policy_was_made(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("original")
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_text("planted")
    with Policy.build("sb", paths=[PathRule.read(str(data))]) as pol:
        data.rename(tmp_path / "moved")
        (tmp_path / "data").symlink_to(other)  # the name now leads elsewhere
        fd, _ = pol.paths.open(OpenRequest(f"{data}/f", os.O_RDONLY))
        with os.fdopen(fd) as f:
            assert f.read() == "original"


def test_the_longest_prefix_decides(tmp_path: Path) -> None:
    (tmp_path / "ro" / "rw").mkdir(parents=True)
    rules = [PathRule.read(str(tmp_path / "ro")), PathRule.write(str(tmp_path / "ro" / "rw"))]
    with Policy.build("sb", paths=rules) as pol:
        fd, d = pol.paths.open(OpenRequest(f"{tmp_path}/ro/rw/new", os.O_WRONLY | os.O_CREAT))
        os.close(fd)
        assert d.rule == f"{tmp_path}/ro/rw (read,write,create,truncate)"
        with pytest.raises(Refused) as info:
            pol.paths.open(OpenRequest(f"{tmp_path}/ro/new", os.O_WRONLY | os.O_CREAT))
        assert info.value.decision.rule == f"{tmp_path}/ro (read)"
        # a name that only starts like the prefix is not beneath it
        assert not pol.paths.names(f"{tmp_path}/rox/file")
        assert not pol.paths.names("relative/ro")


def test_a_file_rule_names_that_file_only(tmp_path: Path) -> None:
    (tmp_path / "one").write_text("1")
    (tmp_path / "two").write_text("2")
    with Policy.build("sb", paths=[PathRule.read(str(tmp_path / "one"))]) as pol:
        fd, _ = pol.paths.open(OpenRequest(str(tmp_path / "one"), os.O_RDONLY))
        os.close(fd)
        assert not pol.paths.names(str(tmp_path / "two"))
        with pytest.raises(Refused) as info:
            pol.paths.open(OpenRequest(f"{tmp_path}/one/../two", os.O_RDONLY))
        assert info.value.errno == errno.ENOTDIR


def test_audit_records_escape_what_the_child_sent(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    records: list[AuditRecord] = []
    with Policy.build("sb-7", paths=[PathRule.read(str(tmp_path))],
                      on_record=records.append) as pol:
        forged = f"{tmp_path}/x\nbroker transparent open by root: allowed" + "y" * 2000
        with pytest.raises(Refused) as info:
            pol.paths.open(OpenRequest(forged, os.O_RDONLY))
        with caplog.at_level(logging.INFO, logger="warden.broker"):
            rec = pol.auditor.record("open", "explicit", forged, info.value.decision)
    assert "\n" not in rec.request and rec.request.endswith("...")
    assert len(rec.request) <= 503
    assert (rec.sandbox, rec.decision, rec.errno) == ("sb-7", "refused", errno.ENAMETOOLONG)
    assert records == [rec]
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    assert caplog.records[0].levelno == logging.WARNING


def test_a_raising_audit_callback_does_not_stop_the_broker(tmp_path: Path) -> None:
    def boom(_rec: AuditRecord) -> None:
        raise RuntimeError("hook failed")

    (tmp_path / "f").write_text("x")
    with Policy.build("sb", paths=[PathRule.read(str(tmp_path))], on_record=boom) as pol:
        fd, d = pol.paths.open(OpenRequest(f"{tmp_path}/f", os.O_RDONLY))
        os.close(fd)
        pol.auditor.record("open", "explicit", "x", d)


def test_path_rules_parse_as_the_cli_and_profiles_give_them() -> None:
    assert PathRule.parse("/srv/in") == PathRule.read("/srv/in")
    assert PathRule.parse("/srv/out", write=True) == PathRule.write("/srv/out")
    rule = PathRule.parse("/dev/null:device:links")
    assert (rule.prefix, rule.links, rule.kinds) == ("/dev/null", True, frozenset({"device"}))
    assert PathRule.parse("/a:b").prefix == "/a:b"  # a colon that is no option stays
    with pytest.raises(ValueError, match="not an absolute"):
        PathRule.parse("data:links")

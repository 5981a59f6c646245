"""The text form of the broker's rules and the checks that need only the text.

One syntax for every source: `warden run --broker-read/--broker-write/
--broker-connect`, a profile's `[broker]` section (read, write, connect) and
the API. `warden.supervisor.broker`'s `PathRule` and `AddressRule` parse and
check through here, and so does the profile parser, so `warden profile check`
refuses exactly the rules `warden run` would. Pure: nothing is opened and no
name resolved here; the broker does that when it makes a sandbox's policy.

Every problem is a ValueError whose message names the rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from warden.profiles.model import BrokerAddress, BrokerPath

MODES = ("read", "write", "create", "truncate")
KINDS = ("fifo", "device")  # kinds a rule may accept besides regular files
PATH_MAX = 4096

_ADDRESS = re.compile(r"\A(?:\[(?P<v6>[0-9A-Fa-f:.]+(?:/\d{1,3})?)\]|(?P<host>[^\s:\[\]/]+"
                      r"(?:/\d{1,2})?)):(?P<lo>\d{1,5})(?:-(?P<hi>\d{1,5}))?"
                      r"(?:/(?P<proto>tcp|udp))?\Z")
HOST_NAME = re.compile(r"\A(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?\Z")


def path_problem(prefix: str, modes: Iterable[str], kinds: Iterable[str]) -> str | None:
    """What is wrong with a path rule, or None: the one check of every source."""
    where = f"broker path {prefix!r}"
    modes, kinds = set(modes), set(kinds)
    if not prefix.startswith("/"):
        return f"{where}: not an absolute path"
    if "\0" in prefix or len(prefix.encode(errors="surrogatepass")) >= PATH_MAX:
        return f"{where}: not a usable path (a NUL, or PATH_MAX bytes or more)"
    if ".." in prefix.split("/"):
        return f"{where}: contains '..'; name the real path"
    if not modes or not modes <= set(MODES):
        return f"{where}: modes must be some of {', '.join(MODES)}, not {sorted(modes)}"
    if not kinds <= set(KINDS):
        return f"{where}: kinds must be some of {', '.join(KINDS)}, not {sorted(kinds)}"
    return None


def parse_path(text: str, *, write: bool = False) -> BrokerPath:
    """`PATH[:links][:fifo][:device]`, as `--broker-read` (or, with `write`,
    `--broker-write`) and a profile's `broker.read` (`broker.write`) give it."""
    path, options = text, list[str]()
    while True:
        head, sep, tail = path.rpartition(":")
        if not sep or tail not in ("links", *KINDS):
            break
        path, options = head, [tail, *options]
    kinds = tuple(k for k in KINDS if k in options)
    problem = path_problem(path, MODES if write else ("read",), kinds)
    if problem:
        raise ValueError(problem)
    return BrokerPath(path, write=write, links="links" in options, kinds=kinds)


def spelled_path(rule: BrokerPath) -> str:
    """The text parse_path reads back into `rule`."""
    return ":".join([rule.prefix, *(["links"] if rule.links else []), *rule.kinds])


def _is_network(host: str) -> bool:
    import ipaddress  # only for a rule that names an address (~1 ms)

    try:
        ipaddress.ip_network(host, strict=False)
    except ValueError:
        return False
    return True


def spelled_address(host: str, low: int, high: int, protocol: str) -> str:
    """`HOST:PORT[-PORT]/PROTOCOL`, IPv6 in brackets."""
    shown = f"[{host}]" if ":" in host else host
    ports = str(low) if low == high or not high else f"{low}-{high}"
    return f"{shown}:{ports}/{protocol}"


def address_problem(host: str, low: int, high: int, protocol: str) -> str | None:
    """What is wrong with an address rule, or None: the one check of every source."""
    high = high or low
    where = f"broker address {spelled_address(host, low, high, protocol)!r}"
    if not 1 <= low <= high <= 65535:
        return f"{where}: ports must be 1..65535, the lower first"
    if protocol not in ("tcp", "udp"):
        return f"{where}: the protocol is tcp or udp"
    if not _is_network(host) and HOST_NAME.match(host) is None:
        return f"{where}: {host!r} is neither an IP, a CIDR range nor a host name"
    return None


def parse_address(text: str) -> BrokerAddress:
    """`HOST:PORT[-PORT][/tcp|/udp]`, as `--broker-connect` and a profile's
    `broker.connect` give it."""
    m = _ADDRESS.match(text)
    if m is None:
        raise ValueError(f"broker address {text!r}: expected HOST:PORT[-PORT][/tcp|/udp] "
                         "(an IPv6 address or range in brackets: [::1]:443)")
    low = int(m["lo"])
    rule = BrokerAddress(m["v6"] or m["host"], low, int(m["hi"] or low), m["proto"] or "tcp")
    problem = address_problem(rule.host, rule.low, rule.high, rule.protocol)
    if problem:
        raise ValueError(problem)
    return rule


__all__ = ["HOST_NAME", "KINDS", "MODES", "PATH_MAX", "address_problem", "parse_address",
           "parse_path", "path_problem", "spelled_address", "spelled_path"]

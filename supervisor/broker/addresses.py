"""Brokered addresses: host names, IPs, CIDR ranges, ports and protocol.

Parent, outside the sandbox, with the supervisor's privilege. An
`AddressRule` is `HOST:PORT[-PORT][/tcp|/udp]`, HOST being a name, an IP or a
CIDR range (IPv6 in brackets: `[::1]:443`, `[2001:db8::/32]:443`). A name in a
rule is resolved once, when the policy is made (like a path rule's directory),
and stands for the addresses it resolved to then.

What is checked is always an address, never a name: a request by name (the
explicit broker's `connect(host, ...)`) is resolved by the supervisor, and
every address it resolves to must be allowed, or the request is refused as a
whole (a name that also resolves to a refused address is refused even if it
would have been tried second). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
is the IPv4 address it maps, for every check: the host's stack would deliver
it there. AF_UNIX and any other family are refused outright: the broker
connects only to IP addresses.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Literal

from warden.profiles import brokerrules
from warden.supervisor.broker.decision import Decision, Refused

Protocol = Literal["tcp", "udp"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], list[str]]

_NAME = brokerrules.HOST_NAME  # the rules' one syntax and check, shared with profiles


def normalise(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it maps; any other as it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def system_resolver(host: str) -> list[str]:
    """Every address `host` resolves to here (getaddrinfo, the supervisor's resolver)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(errno.ENOENT, f"{host} does not resolve: {e.strerror}") from None
    return [str(info[4][0]).split("%", 1)[0] for info in infos]


@dataclasses.dataclass(frozen=True)
class AddressRule:
    """Connections to `host` (a name, an IP or a CIDR range) on ports `low`..`high`
    over `protocol`."""

    host: str
    low: int
    high: int = 0  # 0: the same as low
    protocol: Protocol = "tcp"

    def __post_init__(self) -> None:
        if not self.high:
            object.__setattr__(self, "high", self.low)
        check_rule(self)

    @classmethod
    def parse(cls, text: str) -> AddressRule:
        """`HOST:PORT[-PORT][/tcp|/udp]` (`--broker-connect`, a profile's list; the one
        syntax: warden.profiles.brokerrules)."""
        rule = brokerrules.parse_address(text)
        return cls(rule.host, rule.low, rule.high, rule.protocol)  # type: ignore[arg-type]

    def network(self) -> IPNetwork | None:
        """The rule's range, or None when its host is a name."""
        try:
            net = ipaddress.ip_network(self.host, strict=False)
        except ValueError:
            return None
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
            mapped = net.network_address.ipv4_mapped
            if mapped is not None:  # a mapped range is the IPv4 range it maps
                return ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
        return net

    def spelled(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        ports = str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        return f"{host}:{ports}/{self.protocol}"


def check_rule(rule: AddressRule) -> None:
    """The one validator of an address rule, for every source (CLI, profile, API)."""
    problem = brokerrules.address_problem(rule.host, rule.low, rule.high, rule.protocol)
    if problem:
        raise ValueError(problem)


class AddressPolicy:
    """The address rules of one sandbox, names resolved when it is made."""

    def __init__(self, rules: Iterable[AddressRule], resolver: Resolver = system_resolver) -> None:
        self._resolver = resolver
        self._nets: list[tuple[IPNetwork, AddressRule]] = []
        self.rules = tuple(rules)
        for rule in self.rules:
            net = rule.network()
            if net is not None:
                self._nets.append((net, rule))
                continue
            for addr in resolver(rule.host):
                ip = normalise(ipaddress.ip_address(addr))
                self._nets.append((ipaddress.ip_network(ip), rule))

    def check(self, ip: IPAddress, port: int, protocol: Protocol) -> Decision:
        """The decision for one address (mapped IPv6 checked as its IPv4)."""
        ip = normalise(ip)
        for net, rule in self._nets:
            if (ip.version == net.version and ip in net and rule.low <= port <= rule.high
                    and rule.protocol == protocol):
                return Decision.allow(rule.spelled(), f"{ip} port {port}/{protocol} is allowed")
        return Decision.refuse(errno.EACCES, None,
                               f"no rule allows {ip} port {port}/{protocol}")

    def resolve(self, host: str, port: int, protocol: Protocol) -> tuple[list[IPAddress], Decision]:
        """The addresses to try for a request by `host` (an IP or a name, which the
        supervisor resolves), all of them allowed; raises Refused otherwise."""
        try:
            addrs = [ipaddress.ip_address(host)]
        except ValueError:
            if _NAME.match(host) is None:
                raise Refused(Decision.refuse(errno.EINVAL, None, "not an IP address or a "
                                              "host name")) from None
            try:
                addrs = [ipaddress.ip_address(a) for a in self._resolver(host)]
            except (OSError, ValueError) as e:
                raise Refused(Decision.refuse(errno.ENOENT, None, str(e))) from None
        if not addrs:
            raise Refused(Decision.refuse(errno.ENOENT, None, f"{host} resolves to nothing"))
        decision = Decision.refuse(errno.EACCES, None, "nothing resolved")
        for ip in dict.fromkeys(addrs):
            decision = self.check(ip, port, protocol)
            if not decision.allowed:
                if str(ip) != host:
                    decision = dataclasses.replace(
                        decision, reason=f"{host} resolves to {ip}: {decision.reason}")
                raise Refused(decision)
        return list(dict.fromkeys(addrs)), decision


def sockaddr(ip: IPAddress, port: int, family: int | None = None) -> tuple[int, tuple[str, int]]:
    """(family, address) to connect a socket of `family` (default: the address's own)
    to `ip`:`port`; an IPv4 address from an AF_INET6 socket goes as its mapped form."""
    fam = family or (socket.AF_INET6 if ip.version == 6 else socket.AF_INET)
    if fam == socket.AF_INET6 and ip.version == 4:
        return fam, (f"::ffff:{ip}", port)
    return fam, (str(ip), port)

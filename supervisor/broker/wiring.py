"""The transparent broker in a sandbox started by `warden run` (or an embedder): the
profile's filter with the brokered calls sent to user-notify, and the broker
attached to the running sandbox's listener.

Parent, outside the sandbox, before it starts (`filter_policy`) and right
after spawn() (`attach`). The profile layer is not changed: a modified
SeccompPolicy is made here and compiled like any other (its cache included).

What a brokered call's notification is answered with when no rule names the
request is CONTINUE: the child's own call runs (`unnamed=None`). That is only
what the profile meant if the profile allows the call: a profile that kills
or refuses `openat` would otherwise see it run. So a profile whose action for
a brokered call (its unconditional rule, or its default) is anything but
allow is refused up front. Its conditional rules stay in force: the filter
checks them before the broker's user-notify, so the calls they refuse or kill
never reach the broker.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Sequence

from warden.profiles.model import (
    Action,
    ActionKind,
    ArgCondition,
    ArgOp,
    Broker,
    SeccompPolicy,
    SyscallRule,
)
from warden.supervisor.broker import transparent
from warden.supervisor.broker.addresses import AddressRule
from warden.supervisor.broker.lookups import AT_EMPTY_PATH, LOOKUP_CALLS, LOOKUP_FILTER
from warden.supervisor.broker.paths import MODES, PathRule
from warden.supervisor.broker.policy import Policy
from warden.supervisor.sandbox.handle import Sandbox

_NOTIFY = Action(ActionKind.NOTIFY)
_ALLOW = Action(ActionKind.ALLOW)
_U32 = 0xFFFFFFFF
_AF_INET, _AF_INET6 = 2, 10


class BrokerFilterError(ValueError):
    """The profile's filter cannot carry the broker; the message names the call."""


def calls(*, paths: bool, addresses: bool) -> list[str]:
    """The calls a broker with path rules (`paths`) and address rules (`addresses`)
    answers: the open family and, with path rules, the lookups (a program stats a
    file before it opens it); connect with address rules."""
    return transparent.brokered_syscalls(connect=addresses, lookups=paths)


def profile_rules(broker: Broker) -> tuple[list[PathRule], list[AddressRule]]:
    """The path and address rules a profile's [broker] section names (`read` and
    `write` as `--broker-read` and `--broker-write`, `connect` as `--broker-connect`),
    each checked again by the rules' one validator (a Profile may come from the API)."""
    paths = [PathRule(p.prefix, frozenset(MODES if p.write else ("read",)), links=p.links,
                      kinds=frozenset(p.kinds)) for p in broker.paths]
    addresses = [AddressRule(a.host, a.low, a.high, a.protocol)  # type: ignore[arg-type]
                 for a in broker.connect]
    return paths, addresses


def _fallback(seccomp: SeccompPolicy, call: str) -> Action:
    uncond = [r.action for r in seccomp.rules if r.syscall == call and not r.conditions]
    return uncond[-1] if uncond else seccomp.default_action


def filter_policy(seccomp: SeccompPolicy, names: Sequence[str], profile: str = "the profile",
                  option: str = "--broker-read") -> SeccompPolicy:
    """`seccomp` with `names` sent to user-notify (newfstatat and statx only when
    AT_EMPTY_PATH is clear) and, when connect is among them, socket() allowed for
    AF_INET and AF_INET6 (the broker replaces the child's socket with its own,
    connected in the supervisor's network). Raises BrokerFilterError for a
    profile that does not allow a brokered call."""
    for call in names:
        action = _fallback(seccomp, call)
        if action.kind is not ActionKind.ALLOW:
            raise BrokerFilterError(
                f"{option}: profile {profile} does not allow {call} ({_spelled(action)}), and "
                f"the broker lets the {call} calls no rule names run as the program made them; "
                "choose a profile that allows it (such as default)")
    added: list[SyscallRule] = []
    for call in names:
        if call in LOOKUP_FILTER:
            cond = (ArgCondition(LOOKUP_FILTER[call], ArgOp.MASKED_EQ, 0, AT_EMPTY_PATH),)
            added.append(SyscallRule(call, _NOTIFY, cond))
        else:
            added.append(SyscallRule(call, _NOTIFY))
    if "connect" in names:
        for family in (_AF_INET, _AF_INET6):
            cond = (ArgCondition(0, ArgOp.MASKED_EQ, family, _U32),)
            if not any(r.syscall == "socket" and r.conditions == cond for r in seccomp.rules):
                added.append(SyscallRule("socket", _ALLOW, cond))
    return dataclasses.replace(seccomp, rules=(*seccomp.rules, *added))


def _spelled(action: Action) -> str:
    if action.errno is None:
        return action.kind.value
    return f"{action.kind.value} {errno.errorcode.get(action.errno, action.errno)}"


def attach(box: Sandbox, policy: Policy, names: Sequence[str]) -> transparent.TransparentBroker:
    """Attach a TransparentBroker for `policy` to the running sandbox `box`, answering
    `names` (as given to filter_policy); the sandbox's handle closes it, and the
    policy with it, when the sandbox ends."""

    def make(seccomp_fd: int) -> transparent.TransparentBroker:
        return transparent.TransparentBroker(seccomp_fd, policy, unnamed=None,
                                             connect="connect" in names,
                                             lookups=any(n in names for n in
                                                         LOOKUP_CALLS.values()),
                                             close_policy=True)

    broker = box.attach_broker(make)
    assert isinstance(broker, transparent.TransparentBroker)
    return broker

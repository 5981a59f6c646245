"""A worker profile's seccomp filter as the worker loads it on itself.

Python workers load their profile's filter in-process, after start-up (the
`strict` profile is written for exactly that). Three adaptations, all here so
the profile files stay as written:

- kill actions become user-notify: every Python worker loads its filter
  with a new listener and hands it to the supervisor, which records the
  refused call (name and arguments) and kills the worker. The kernel allows
  one listener per filter stack, so the filter a worker's filter is stacked
  on (the zygote's sandbox filter, or a `spawn` worker's launch filter) is
  compiled by `launch_filter()`: no listener, plain kills;
- the calls the ipc channel on fd 3 needs are allowed when the profile says
  nothing about them: a worker that cannot receive its calls is no worker.
  They act only on descriptors the worker already holds;
- the AF_INET/AF_INET6 sockets `default` allows a program (which has a
  network namespace of its own) are refused to a worker whose profile does
  not ask for the host network: a fork worker shares the supervisor's
  namespace and a zygote worker its siblings' (`_without_own_net_inet`).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import resource

from warden.profiles import load_profile
from warden.profiles.compiler import compile_policy, rule_matches
from warden.profiles.model import (
    ALLOW,
    KILL_PROCESS,
    Action,
    ActionKind,
    Origin,
    Profile,
    SeccompPolicy,
    SyscallRule,
)

CHANNEL_CALLS = ("recvmsg", "sendmsg", "recvfrom", "sendto", "fcntl", "poll", "ppoll",
                 # CPython formats a socket's repr (getsockname) whenever a socket object
                 # is finalized unclosed, even when the ResourceWarning is then ignored
                 "getsockname", "getpeername", "getsockopt",
                 # the runtime lowers RLIMIT_NOFILE after it has handed over its seccomp
                 # listener; limits can only go down (hard = soft, no CAP_SYS_RESOURCE)
                 "prlimit64",
                 "getpid", "gettid", "rt_sigprocmask", "rt_sigreturn", "exit_group", "exit",
                 "futex", "close", "read", "write", "madvise", "munmap", "mmap", "brk",
                 "mremap", "fstat", "newfstatat", "lseek", "getrandom")
_ORIGIN = Origin("supervisor/policy.py", 1, 1, ("the worker's ipc channel",))


def worker_policy(policy: SeccompPolicy) -> SeccompPolicy:
    """`policy` plus an allow rule for each channel call it does not mention."""
    named = {r.syscall for r in policy.rules}
    extra = tuple(SyscallRule(name, ALLOW, (), _ORIGIN) for name in CHANNEL_CALLS
                  if name not in named)
    return SeccompPolicy(default_action=policy.default_action, rules=policy.rules + extra,
                         bad_arch_action=policy.bad_arch_action)


@functools.lru_cache(maxsize=32)
def _profile(name: str) -> Profile:
    return load_profile(name)


def resolve_profile(profile: str | Profile) -> Profile:
    return _profile(profile) if isinstance(profile, str) else profile


_INET_PROBES = ((2, 1, 0), (10, 1, 0), (2, 2, 0), (10, 2, 0))  # AF_INET/AF_INET6 x stream/dgram


def _without_own_net_inet(profile: Profile) -> SeccompPolicy:
    """`profile`'s policy without the rules that allow AF_INET/AF_INET6 sockets, unless
    it asks for the host network (namespaces.net = false): they then fall back to the
    profile's refusal of other domains, under every start method alike."""
    policy = profile.seccomp
    if not profile.namespaces.net:
        return policy
    keep = tuple(r for r in policy.rules
                 if not (r.syscall == "socket" and r.action == ALLOW and r.conditions
                         and any(rule_matches(r, a) for a in _INET_PROBES)))
    return dataclasses.replace(policy, rules=keep)


@functools.lru_cache(maxsize=64)
def _filter_for(profile: Profile, notify: bool) -> bytes:
    return compile_policy(worker_policy(_without_own_net_inet(profile)), kill_as_notify=notify)


def worker_filter(profile: Profile, notify: bool = False) -> bytes:
    """Compiled once per profile (profiles are frozen and hashable). notify: kill actions
    as user-notify, for a worker that hands its own listener to the supervisor."""
    return _filter_for(profile, notify)


_KILLS = (ActionKind.KILL_PROCESS, ActionKind.KILL_THREAD)


def _may_kill(policy: SeccompPolicy, syscall: str) -> bool:
    """Whether `policy` can kill some call of `syscall` (conservative: True if unsure)."""
    rules = [r for r in policy.rules if r.syscall == syscall]
    if any(r.action.kind in _KILLS for r in rules):
        return True
    # Calls no unconditional rule catches fall to the default action.
    return all(r.conditions for r in rules) and policy.default_action.kind in _KILLS


def errno_as_kill(policy: SeccompPolicy, stacked: SeccompPolicy | None = None) -> SeccompPolicy:
    """`policy` with its errno refusals (EPERM, EACCES, ...) turned into kills.

    For a filter that a worker's own, notifying filter is stacked on: the
    kernel lets an errno verdict of any filter in the stack win over
    user-notify, so ptrace, mount, unshare, ... would answer EPERM to a
    `strict` worker instead of getting it killed. With `stacked` (the one
    worker policy that will be stacked on it), only the calls that policy
    may kill are hardened; the others keep their errno answer, so a worker
    under a permissive profile still reads EPERM from ptrace. ENOSYS answers
    stay (clone3 -> ENOSYS is how glibc falls back to clone, whose flags
    the filters can check).
    """
    def harden(a: Action, syscall: str | None) -> Action:
        if a.kind is not ActionKind.ERRNO or a.errno == errno.ENOSYS:
            return a
        if stacked is not None and syscall is not None and not _may_kill(stacked, syscall):
            return a
        return KILL_PROCESS

    return dataclasses.replace(
        policy, default_action=harden(policy.default_action, None),
        rules=tuple(dataclasses.replace(r, action=harden(r.action, r.syscall))
                    for r in policy.rules))


@functools.lru_cache(maxsize=32)
def launch_filter(profile: Profile, worker: Profile | None = None) -> bytes:
    """The filter of a sandbox whose workers stack their own notifying filter on it.

    Kill actions stay SECCOMP_RET_KILL_PROCESS and the sandbox gets no
    listener: the kernel allows one listener per filter stack
    (has_duplicate_listener walks the whole chain), so the worker's filter
    can only take one if this filter holds none. Errno refusals become
    kills (errno_as_kill; with `worker`, the one profile stacked on it, only
    those for calls that profile may kill). A call both filters refuse is
    killed by this one, without a name; a call only the worker's filter
    refuses is reported by the worker's listener with its name and arguments.
    """
    stacked = worker_policy(worker.seccomp) if worker is not None else None
    return compile_policy(errno_as_kill(profile.seccomp, stacked), kill_as_notify=False)


def worker_rlimits(profile: Profile) -> tuple[tuple[int, int], ...]:
    """The (RLIMIT_*, value) pairs a Python worker sets on itself for `profile`."""
    out = [(resource.RLIMIT_CORE, 0)]
    lim = profile.limits
    if lim.open_files is not None:
        out.append((resource.RLIMIT_NOFILE, lim.open_files))
    if lim.processes is not None:
        out.append((resource.RLIMIT_NPROC, lim.processes))
    if lim.memory_bytes is not None:  # `spawn` also gets a cgroup; forked workers only this
        out.append((resource.RLIMIT_AS, lim.memory_bytes))
    if lim.cpu_time_seconds is not None:
        out.append((resource.RLIMIT_CPU, int(lim.cpu_time_seconds)))
    return tuple(out)

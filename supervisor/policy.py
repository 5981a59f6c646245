"""A worker profile's seccomp filter as the worker loads it on itself.

Python workers load their profile's filter in-process, after start-up (the
`strict` profile is written for exactly that). Two adaptations, both here so
the profile files stay as written:

- kill actions become user-notify for zygote and fork workers, which load
  the filter with a new listener and hand it to the supervisor (so it
  records the refused call); `spawn` workers keep `kill-process`: their
  filter is stacked on the sandbox's launch filter, which already owns the
  stack's one listener, so the supervisor learns of those kills from the
  wait status (SIGSYS);
- the calls the ipc channel on fd 3 needs are allowed when the profile says
  nothing about them: a worker that cannot receive its calls is no worker.
  They act only on descriptors the worker already holds.
"""

from __future__ import annotations

import functools

from profiles import load_profile
from profiles.compiler import compile_policy
from profiles.model import ALLOW, Origin, Profile, SeccompPolicy, SyscallRule

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


@functools.lru_cache(maxsize=64)
def _filter_for(profile: Profile, notify: bool) -> bytes:
    return compile_policy(worker_policy(profile.seccomp), kill_as_notify=notify)


def worker_filter(profile: Profile, notify: bool = False) -> bytes:
    """Compiled once per profile (profiles are frozen and hashable). notify: kill actions
    as user-notify, for a worker that hands its own listener to the supervisor."""
    return _filter_for(profile, notify)

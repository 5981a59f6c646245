"""Per-uid kernel budgets a sandbox uses are charged to its own outer uid.

The kernel keys several budgets by uid, outside every namespace: keys and key bytes
(/proc/key-users), queued signals (RLIMIT_SIGPENDING, counted up the user-namespace
chain). A sandbox that runs as an outer uid of its own uses its own; the host user
(root here) keeps all of his. As an ordinary user without subordinate ids every
sandbox is the user's own uid, which the status names in `weakened`
(test_sandbox_accounting.py); these tests then skip.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal

import pytest

from tests.sandbox.test_sandbox_accounting import OWN_IDS, Held

NEEDS = ("needs root (or subids): as an ordinary user without /etc/subuid and /etc/subgid "
         "ranges the sandbox is the user's own uid, and its budgets are the user's")


def _key_users() -> dict[int, tuple[int, int]]:
    """{uid: (keys, keys instantiated)} from /proc/key-users."""
    out = {}
    with open("/proc/key-users") as f:
        for line in f:
            uid, _, rest = line.partition(":")
            keys = rest.split()[1].split("/")
            out[int(uid)] = (int(keys[0]), int(keys[1]))
    return out


def test_the_sandbox_session_keyring_is_charged_to_its_outer_uid() -> None:
    if not OWN_IDS:
        pytest.skip(NEEDS)
    if not os.path.exists("/proc/key-users"):
        pytest.skip("needs root (or subids) and a kernel with keys: no /proc/key-users")
    mine = _key_users().get(os.getuid())
    held = Held("import sys; print(1, flush=True); sys.stdin.read()")
    try:
        held.line()
        now = _key_users()
        assert now.get(held.box.outer_ids[0], (0, 0))[0] >= 1  # its keyring is its own
        assert now.get(os.getuid()) == mine
    finally:
        held.finish()


QUEUE_SIGNALS = """
import json, os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
n = 0
while n < 200_000:
    os.kill(os.getpid(), signal.SIGRTMIN)  # kill(2) queues an RT signal past the rlimit
    n += 1
print(json.dumps(n), flush=True)
sys.stdin.read()
"""


def test_signals_a_sandbox_queues_do_not_use_up_the_host_users_budget() -> None:
    if not OWN_IDS:
        pytest.skip(NEEDS)
    soft, _hard = resource.getrlimit(resource.RLIMIT_SIGPENDING)
    held = Held(QUEUE_SIGNALS)
    try:
        assert held.line() == 200_000
        assert soft < 200_000 or soft == -1  # the control: more than the host user may queue
        libc = ctypes.CDLL(None, use_errno=True)

        class SigVal(ctypes.Union):
            _fields_ = [("i", ctypes.c_int), ("p", ctypes.c_void_p)]

        sig = signal.SIGRTMIN + 1
        old = signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
        try:
            assert libc.sigqueue(os.getpid(), sig, SigVal(0)) == 0, ctypes.get_errno()
            assert sig in signal.sigpending()
        finally:
            signal.sigtimedwait([sig], 0)
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    finally:
        held.finish()

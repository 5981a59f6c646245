"""A forked child under a seccomp filter that sends the brokered calls to user-notify,
and the parent answering them with a real TransparentBroker.

The child loads the filter with SECCOMP_FILTER_FLAG_NEW_LISTENER through the
sandbox's own loader (seccomp.PreparedFilter), hands the listener to the
parent over SCM_RIGHTS, runs `body`, and reports what it returns (JSON) on a
pipe. Nothing is mocked: the kernel queues the notifications, the broker
reads the child's memory and installs descriptors in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import pyseccomp

from warden.supervisor.broker import _notif, transparent
from warden.supervisor.broker.lookups import AT_EMPTY_PATH, LOOKUP_FILTER
from warden.supervisor.broker.policy import Policy
from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.notify import Notification
from warden.supervisor.sandbox.seccomp import PreparedFilter

HANG_GUARD = 60.0  # seconds; only to turn a hang into a failure


def notify_bpf(calls: list[str]) -> bytes:
    """A filter allowing everything but `calls`, which go to user-notify (newfstatat
    and statx only when AT_EMPTY_PATH is clear, as lookups.LOOKUP_FILTER says)."""
    f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in calls:
        if name in LOOKUP_FILTER:
            f.add_rule(pyseccomp.NOTIFY, name,
                       pyseccomp.Arg(LOOKUP_FILTER[name], pyseccomp.MASKED_EQ, AT_EMPTY_PATH, 0))
        else:
            f.add_rule(pyseccomp.NOTIFY, name)
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def errname(e: OSError) -> str:
    import errno

    return errno.errorcode.get(e.errno or 0, str(e.errno))


class Child:
    """A forked child whose listener the parent holds (`listener`)."""

    def __init__(self, body: Callable[[], Any], calls: list[str] | None = None) -> None:
        prepared = PreparedFilter(notify_bpf(calls or transparent.brokered_syscalls()),
                                  listener=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: filter, hand over the listener, run the body
            code = 0
            try:
                ours.close()
                os.close(r)
                _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1)
                fd = prepared.load()
                socket.send_fds(theirs, [b"L"], [fd])
                os.close(fd)
                result = body()
                data = json.dumps({"result": result}).encode()
            except BaseException as e:  # report, never return into pytest
                data = json.dumps({"error": repr(e)}).encode()
                code = 1
            try:
                while data:
                    data = data[os.write(w, data):]
            finally:
                os._exit(code)
        theirs.close()
        os.close(w)
        self.pid = pid
        self._out = r
        try:
            if not select.select([ours], [], [], HANG_GUARD)[0]:
                raise TimeoutError("the child never sent its listener")
            _msg, fds, _flags, _addr = socket.recv_fds(ours, 8, 1)
        finally:
            ours.close()
        if len(fds) != 1:
            raise RuntimeError("the child failed before loading its filter: " + self.result())
        self.listener = fds[0]

    def next(self) -> Notification:
        """The next notification (waiting for it)."""
        if not select.select([self.listener], [], [], HANG_GUARD)[0]:
            raise TimeoutError("no notification came")
        n = _notif.receive(self.listener)
        assert n is not None
        return n

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def result(self) -> Any:
        """Wait for the child and return what its body returned."""
        chunks = []
        while True:
            if not select.select([self._out], [], [], HANG_GUARD)[0]:
                self.kill()
                raise TimeoutError("the child did not finish")
            chunk = os.read(self._out, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self._out)
        self._out = -1
        os.waitpid(self.pid, 0)
        data = b"".join(chunks)
        if not data:
            return "(the child reported nothing)"
        out = json.loads(data)
        if "error" in out:
            raise AssertionError(f"the child failed: {out['error']}")
        return out["result"]

    def close(self) -> None:
        for fd in (self.listener, self._out):
            with contextlib.suppress(OSError):
                if fd >= 0:
                    os.close(fd)


def run(policy: Policy, body: Callable[[], Any], *, unnamed: int | None = None,
        calls: list[str] | None = None, lookups: bool = False) -> Any:
    """Run `body` in a child under the broker until the child ends; its result."""
    child = Child(body, calls or transparent.brokered_syscalls(lookups=lookups))
    broker = transparent.TransparentBroker(child.listener, policy, unnamed=unnamed,
                                           lookups=lookups)
    try:
        transparent.serve(broker, child.listener)
        return child.result()
    finally:
        broker.close()
        child.close()
        child.kill()

"""The handshake: a new Python worker's HELLO, the last step before the supervisor adopts it.

The worker read its bootstrap, built its implementation, locked itself down and
sent one HELLO datagram on its channel: the kernel stamps it with the worker's
pid as the supervisor sees it (SO_PASSCRED), and it carries the worker's
seccomp listener (SCM_RIGHTS), checked to be one, never assumed. Instead of
HELLO a worker that cannot start sends a bootstrap.StartFailed record, quoted
in the error. A worker that ends, sends anything else or is not ready in time
is killed, its end reported (events.Exited) and WorkerStartFailed raised; one
whose spawn is cancelled meanwhile is killed and reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import struct

from warden.supervisor import bootstrap, events
from warden.supervisor.errors import WorkerStartFailed
from warden.supervisor.process import Reaper, WorkerProcess, final_status
from warden.supervisor.sandbox import Outcome
from warden.supervisor.sandbox.lowlevel import close_all, fds_from_ancillary, is_seccomp_listener

_CREDS = struct.Struct("=iII")
_HELLO_BYTES = 4 * bootstrap.MAX_FAILURE_CHARS + 64  # HELLO, or a StartFailed record


async def await_ready(sock: socket.socket, proc: WorkerProcess, timeout: float, wid: str, *,
                      sink: events.EventSink, reaper: Reaper) -> int:
    """Wait for the worker's HELLO; its pid as we see it. The worker is then ready:
    its listener adopted, `proc` bound to that pid, setup done, SO_PASSCRED off.

    On any failure (or cancellation) `sock` is closed and the worker ends."""
    try:
        pid = await _await_hello(sock, proc, timeout, wid, sink)
    except BaseException:
        sock.close()
        if proc.service() is None:  # cancelled (or failed) while it starts: end it
            proc.kill(Outcome.KILLED, f"worker {wid}: spawn() did not complete")
            reaper.reap_later(proc)
        raise
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
    # OSError: it ended between HELLO and here; its end is reported as any other.
    with contextlib.suppress(OSError):
        proc.bind(pid)
    proc.setup_done = True
    return pid


def _read_hello(sock: socket.socket) -> tuple[bytes, int | None, list[int]]:
    """One datagram: its bytes, the sender's pid (SCM_CREDENTIALS) and the fds it carried."""
    data, anc, _flags, _addr = sock.recvmsg(
        _HELLO_BYTES, socket.CMSG_SPACE(_CREDS.size) + socket.CMSG_SPACE(4),
        socket.MSG_CMSG_CLOEXEC)
    pid = None
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = _CREDS.unpack(payload[:_CREDS.size])[0]
    return data, pid, fds_from_ancillary(anc)


async def _await_hello(sock: socket.socket, proc: WorkerProcess, timeout: float, wid: str,
                       sink: events.EventSink) -> int:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()

    def on_sock() -> None:
        try:
            data, pid, fds = _read_hello(sock)
        except BlockingIOError:
            return
        except OSError as e:
            if not fut.done():
                fut.set_exception(e)
            return
        listener = fds.pop() if len(fds) == 1 else None
        close_all(fds)
        if listener is not None and not is_seccomp_listener(listener):
            os.close(listener)
            listener = None
        if fut.done():
            if listener is not None:
                os.close(listener)
            return
        if data == bootstrap.HELLO and pid and listener is not None:
            proc.adopt_listener(listener)
            fut.set_result(pid)
        elif data == bootstrap.HELLO and pid:
            fut.set_exception(ConnectionError("the worker did not hand over its seccomp "
                                              "listener"))
        else:
            if listener is not None:
                os.close(listener)
            failure = bootstrap.decode_failure(data) if data else None
            fut.set_exception(ConnectionError(
                f"it reported {events.child_text(failure)}"
                if failure is not None else
                "the worker closed its channel before it was ready" if not data else
                "the worker sent something before HELLO"))

    def on_proc() -> None:
        if proc.service() is not None and not fut.done():
            on_sock()  # its last words (StartFailed) may still wait in the channel
            if not fut.done():
                fut.set_exception(ConnectionError("the worker ended before it was ready"))

    loop.add_reader(sock.fileno(), on_sock)
    watched = proc.fds()
    for fd in watched:
        loop.add_reader(fd, on_proc)
    try:
        return await asyncio.wait_for(fut, timeout)
    except (ConnectionError, TimeoutError) as e:
        reason = (f"not ready within {timeout:g}s" if isinstance(e, TimeoutError)
                  else str(e))
        proc.kill(Outcome.SETUP_ERROR, f"worker {wid}: {reason}")
        status = await final_status(proc)
        if status.outcome is Outcome.SETUP_ERROR and status.reason != f"worker {wid}: {reason}":
            # It ended on its own before our kill could record the cause (its exit,
            # read first, said only that it failed): its own words are the reason.
            status = dataclasses.replace(status, reason=f"worker {wid}: {reason}")
        sink.emit(events.Exited(wid, proc.pid, status))
        raise WorkerStartFailed(f"worker {wid} failed to start: {reason} "
                                f"({status.describe()})", status) from None
    finally:
        loop.remove_reader(sock.fileno())
        for fd in watched:
            loop.remove_reader(fd)

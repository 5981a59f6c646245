"""`python -m warden.supervisor.zygote_main [--warm=N] [--shared-tmp] [MODULE...]`: the
zygote itself, inside its sandbox (see warden.supervisor.zygote for what it is).

It preloads the worker runtime and MODULEs, then serves the supervisor's
requests on fd 3 (warden.supervisor.zygote_messages): forks confined workers
(warden.supervisor.confine), keeps `warm` of them pre-forked, kills the ones
asked for and reports every one it reaps. It never runs untrusted code and
never reads anything but the supervisor's requests.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import importlib
import os
import signal
import socket
import sys

import msgspec

from warden.supervisor import zygote_messages as zm
from warden.supervisor.confine import Isolation
from warden.supervisor.sandbox.lowlevel import close_all, recv_with_fds, wait_readable


def _serve(sock: socket.socket, warm_target: int, how: Isolation) -> None:
    from warden.supervisor.confine import fork_warm, fork_worker

    own = os.pidfd_open(os.getpid())
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sock.send(zm.encode(zm.Ready()))
    children: set[int] = set()
    # Pre-forked, confined, warmed-up workers waiting for a channel (Android's
    # "unspecialized app process" pool): a request then costs one fd handover.
    warm: collections.deque[tuple[int, socket.socket]] = collections.deque()
    while True:
        idle = len(warm) < warm_target
        ready = wait_readable([sock.fileno(), wake_r], 0 if idle else None)
        if not ready and idle:
            try:
                warm.append(fork_warm(own, how))
            except OSError:
                warm_target = len(warm)  # cannot pre-fork: serve cold forks only
            continue
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
            while children:
                try:
                    pid, ws = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                for entry in warm:
                    if entry[0] == pid:  # a waiting worker died unassigned: not reported
                        warm.remove(entry)
                        entry[1].close()
                        break
                else:
                    children.discard(pid)
                    sock.send(zm.encode(zm.Ended(pid=pid, wait_status=ws)))
        if sock.fileno() in ready:
            data, fds = recv_with_fds(sock, zm.MAX_MESSAGE_BYTES, 1)
            if not data:
                return  # the supervisor closed: we are done
            try:
                request = zm.to_zygote.decode(data)
            except msgspec.MsgspecError:
                request = None  # never sent by our supervisor: ignored
            if isinstance(request, zm.Fork) and len(fds) == 1:
                try:
                    assigned = _assign_warm(warm, fds[0])
                    pid = (assigned if assigned is not None
                           else fork_worker(fds[0], own, how=how))
                    children.add(pid)
                    sock.send(zm.encode(zm.Forked(request=request.request, pid=pid)))
                except OSError as e:
                    sock.send(zm.encode(zm.ForkFailed(request=request.request,
                                                      errno=e.errno or errno.EIO)))
            elif isinstance(request, zm.Kill) and request.pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(request.pid, signal.SIGKILL)
            close_all(fds)


def _assign_warm(warm: collections.deque[tuple[int, socket.socket]], channel_fd: int) \
        -> int | None:
    """Hand `channel_fd` to a waiting worker; its pid, or None if none could take it."""
    while warm:
        pid, s = warm.popleft()
        try:
            socket.send_fds(s, [b"G"], [channel_fd])
            return pid
        except OSError:
            continue  # it died meanwhile; its exit is reaped (unreported) as a warm one
        finally:
            s.close()
    return None


def main() -> None:
    """Entry point inside the zygote's sandbox: preload, then serve fork requests."""
    import warden.supervisor.worker_main  # noqa: F401
    from warden import ipc  # noqa: F401  (preloaded so forked workers start warm)
    from warden.supervisor.confine import ZYGOTE_FS_RULES, landlock_abi
    warm = 0
    shared_tmp = False
    for arg in sys.argv[1:]:
        if arg.startswith("--warm="):
            warm = int(arg.partition("=")[2])
        elif arg == "--shared-tmp":
            shared_tmp = True
        else:
            importlib.import_module(arg)
    # Each worker: its own /proc and (unless shared) /tmp, and its own Landlock domain
    # with the file rules this sandbox would have had (the zygote's sandbox has none:
    # Landlock would refuse the workers' mounts) and the signal and socket scopes.
    how = Isolation(own_keyring=False, private_tmp=not shared_tmp, fs_rules=ZYGOTE_FS_RULES,
                    landlock_abi=landlock_abi())
    from warden.supervisor import bootstrap
    # Build msgspec's decoder for the bootstrap once, here, not in every worker.
    bootstrap.decode(bootstrap.encode(bootstrap.Bootstrap(
        worker_id="", target="", host_interface=None, profile="", seccomp_filter=b"",
        notify=False, rlimits=())))
    from warden.supervisor.sandbox import self_confine
    self_confine.set_dumpable(False)
    import gc
    gc.collect()
    gc.freeze()  # keep the collector off the shared pages: fewer copy-on-write faults per fork
    sock = socket.socket(fileno=3)
    sock.setblocking(True)
    _serve(sock, warm, how)


if __name__ == "__main__":
    main()

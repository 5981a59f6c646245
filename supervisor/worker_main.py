"""The child side of a Python worker: read the bootstrap, load the target, lock down, serve.

Runs inside the worker whatever its start method: after exec'ing a fresh
interpreter in a sandbox (`python -m warden.supervisor.worker_main`), or right
after a fork from the zygote or from the supervisor. Order matters:

1. read the bootstrap from fd 3 (trusted data, written by the supervisor);
2. import the target and build the implementation (may need files);
3. open the ipc channel on fd 3;
4. rlimits, non-dumpable, no_new_privs, then the profile's seccomp filter;
5. send HELLO (stamped by the kernel with our pid), then serve until the
   supervisor closes the channel.

If any step before HELLO fails, the worker sends a bootstrap.StartFailed record
with the end of its traceback instead (report_start_failure), so the
supervisor's SpawnError says why, then exits with EXIT_SETUP.

Nothing the implementation does can widen what step 4 set.
"""

from __future__ import annotations

import array
import contextlib
import errno
import importlib
import os
import resource
import socket
import sys
import traceback
from typing import Any, NoReturn

from warden import ipc
from warden.errors import EXIT_SETUP
from warden.supervisor import bootstrap
from warden.supervisor.errors import InvalidArgument, TargetEscaped
from warden.supervisor.sandbox import self_confine
from warden.supervisor.sandbox.seccomp import PreparedFilter

CHANNEL_FD = 3

_host: Any = None
_broker: ipc.Channel | None = None


def host() -> Any:
    """The typed remote of the interface the supervisor serves to this worker (or None)."""
    return _host


def broker_channel() -> ipc.Channel | None:
    """The channel of this worker's explicit broker (None: spawned without broker=)."""
    return _broker


def resolve(target: str) -> Any:
    """'package.module:Attr' -> the attribute (imported)."""
    mod_name, _, attr = target.partition(":")
    if not mod_name or not attr:
        raise InvalidArgument(f"target {target!r} must look like 'package.module:Attribute'")
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _read_bootstrap(fd: int) -> bootstrap.Bootstrap:
    os.set_blocking(fd, True)
    data = os.read(fd, bootstrap.MAX_BOOTSTRAP_BYTES)  # one whole datagram (SOCK_SEQPACKET)
    return bootstrap.decode(data)


def _read_broker_endpoint(fd: int) -> ipc.Channel:
    """The datagram behind the bootstrap: exactly one fd, our end of the broker channel
    (trusted, from the supervisor; checked all the same, so a mix-up fails the start)."""
    from warden.supervisor.broker.explicit import Broker
    from warden.supervisor.broker.offer import ENDPOINT
    from warden.supervisor.sandbox.lowlevel import close_all, recv_with_fds

    sock = socket.socket(fileno=os.dup(fd))
    try:
        data, fds = recv_with_fds(sock, len(ENDPOINT) + 1, 2)
    finally:
        sock.close()
    if data != ENDPOINT or len(fds) != 1:
        close_all(fds)
        raise InvalidArgument("the bootstrap announced a broker endpoint, and the next "
                              "message on the channel is not one")
    os.set_inheritable(fds[0], False)
    return ipc.connect(fds[0], remote=Broker, peer_id="broker")


def report_start_failure(fd: int, error: BaseException) -> None:
    """Tell the supervisor, on the channel at `fd`, why this worker cannot start.

    The text is the exception's own lines (for a SyntaxError: file, line, caret)
    and where it was raised. Best effort: the channel may be gone. Once the
    worker's filter is loaded, no frames: traceback may open source files, which
    the filter may refuse with a notification nobody reads yet."""
    text = "".join(traceback.format_exception_only(error)).strip()
    if not _filtered:
        frames = [f for f in traceback.extract_tb(error.__traceback__)
                  if not f.filename.startswith("<frozen")]
        if frames:
            text += f" (at {frames[-1].filename}:{frames[-1].lineno})"
    with contextlib.suppress(OSError):
        os.write(fd, bootstrap.encode_failure(text))  # one datagram (SOCK_SEQPACKET)


def run(fd: int = CHANNEL_FD) -> int:
    """Serve the target named by the bootstrap on channel `fd`; returns the exit code.
    A failure before HELLO is reported on the channel, then re-raised."""
    # The channel is this process's alone: a program it exec's does not inherit it (the
    # supervisor then sees the channel close while the process lives, and kills it).
    os.set_inheritable(fd, False)
    try:
        return _start_and_serve(fd)
    except BaseException as e:
        if not _hello_sent:
            report_start_failure(fd, e)
        raise


_hello_sent = False
_filtered = False


def _start_and_serve(fd: int) -> int:
    global _host, _hello_sent, _broker
    boot = _read_bootstrap(fd)
    if boot.broker:
        _broker = _read_broker_endpoint(fd)
    factory = resolve(boot.target)
    impl = factory()
    host_iface = resolve(boot.host_interface) if boot.host_interface else None
    limits = ipc.Limits(max_frame_bytes=boot.max_frame_bytes)
    channel = ipc.connect(fd, serve=impl, remote=host_iface, limits=limits,
                          validate_outgoing=False)
    _host = channel.remote if host_iface is not None else None
    # Everything the ready message needs is built before the filter goes on: until the
    # supervisor holds the listener, a refused call would wait for it forever.
    hello = socket.socket(fileno=os.dup(fd))
    expected = os.dup(0)  # the listener will take the lowest free fd: this one
    os.close(expected)
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [expected]))]
    message = [bootstrap.HELLO]
    listener = lock_down(boot)
    if listener is not None:  # the supervisor reads what our filter refuses
        if listener != expected:
            os._exit(EXIT_SETUP)
        hello.sendmsg(message, rights)
        os.close(listener)
    else:
        hello.send(bootstrap.HELLO)
    hello.close()
    _hello_sent = True
    # Only now: the kernel refuses to pass an fd (the listener) while the sender's uid
    # has more fds in flight than its RLIMIT_NOFILE, and every worker shares one uid.
    _set_rlimits(boot, only=resource.RLIMIT_NOFILE)
    try:
        channel.serve_forever()
    except ipc.ChannelError:
        return 1
    return 0


def warm_up() -> None:
    """Run the runtime's code paths once before the real work, in a pre-forked worker:
    the copy-on-write faults and lazy initialisation happen here, off the critical path."""
    bootstrap.decode(bootstrap.encode(bootstrap.Bootstrap(
        worker_id="", target="", host_interface=None, profile="", seccomp_filter=b"",
        notify=False, rlimits=())))
    # Twice: the first 128 KiB frame buffer is an mmap, whose free raises glibc's
    # mmap threshold; the second comes from the heap and, freed, stays there,
    # already faulted in, for the real channel's buffer.
    for _ in range(2):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        channel = ipc.connect(a, validate_outgoing=False)
        channel.close()
        b.close()
    PreparedFilter(b"\0" * 8, listener=False)  # ctypes' call paths, without loading it


def _set_rlimits(boot: bootstrap.Bootstrap, only: int | None = None,
                 skip: int | None = None) -> None:
    """soft = hard = the profile's value (never above the current hard limit)."""
    for kind, value in boot.rlimits:
        if (only is not None and kind != only) or kind == skip:
            continue
        _soft, hard = resource.getrlimit(kind)
        cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (cap, cap))


def _no_other_process() -> None:
    """Refuse to serve when code that ran before the filter left a process behind.

    The target's import and constructor are trusted code that runs under the launch
    filter only (docs/supervisor.md): a process it forked would stay outside the
    profile's filter for good. This process's PID namespace holds only itself (zygote
    and fork workers are its pid 1) and, for spawn workers, the sandbox's init (pid 1);
    an orphan of a double fork is reparented to one of them, so it shows here too."""
    me = os.getpid()
    others = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me))
    if others:
        raise TargetEscaped(f"the worker's target left processes running before its "
                            f"profile's filter was loaded (pids {others[:8]} in its "
                            "namespace); a target may start processes only once it serves")


def lock_down(boot: bootstrap.Bootstrap) -> int | None:
    """The worker's own confinement, applied before it sees any input. Returns the
    filter's seccomp listener when the bootstrap asks for one.

    The filter goes on every thread (TSYNC): a thread the target started in its
    constructor is filtered like the rest. A listener the target made itself cannot
    be passed off as ours: the kernel allows one listener per filter stack, so our
    load then fails (EBUSY) and the worker never says it is ready."""
    _set_rlimits(boot, skip=resource.RLIMIT_NOFILE)  # RLIMIT_NOFILE: see run()
    self_confine.set_dumpable(False)
    self_confine.set_no_new_privs()
    if boot.seccomp_filter:
        global _filtered
        _no_other_process()
        _filtered = True
        try:
            fd = PreparedFilter(boot.seccomp_filter, listener=boot.notify,
                                all_threads=True).load()
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise TargetEscaped("the worker's target loaded a seccomp filter with a "
                                    "listener of its own before its profile's filter; the "
                                    "kernel allows one listener per filter stack, so the "
                                    "profile's cannot be loaded") from None
            raise
        return fd if boot.notify else None
    return None


def main() -> NoReturn:
    try:
        code = run()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # setup failed: say why on stderr, exit as a setup error
        print(f"warden worker: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETUP)
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so host() is one global.
    from warden.supervisor import worker_main as _module

    _module.main()

"""The transparent broker's connect on the real kernel: the child's own connect()
reaches exactly the addresses its policy names, through the supervisor's socket."""

from __future__ import annotations

import contextlib
import errno
import select
import socket
from collections.abc import Iterator

import pytest

from tests.broker.harness import errname, run
from tests.broker.web import GREETING, greeter
from warden.supervisor.broker.addresses import AddressRule
from warden.supervisor.broker.policy import AuditRecord, Policy

# Short: a sun_path holds 108 bytes, less than the test directories' names.
UNIX_PATH = "/nonexistent-warden-broker/sock"


@pytest.fixture
def server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that greets each connection; its port."""
    with greeter() as port:
        yield port


def try_connect(family: int, addr: object, kind: int = socket.SOCK_STREAM,
                nonblocking: bool = False) -> str:
    """What the child's own connect gives: the greeting read, "ok", or the errno's name."""
    s = socket.socket(family, kind)
    try:
        if nonblocking:
            s.setblocking(False)
            err = s.connect_ex(addr)  # type: ignore[arg-type]
            if err not in (0, errno.EINPROGRESS):
                return errno.errorcode[err]
            select.select([], [s], [], 30)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return errno.errorcode[err]
            select.select([s], [], [], 30)
            return "nonblocking " + s.recv(100).decode()
        s.connect(addr)  # type: ignore[arg-type]
        if kind == socket.SOCK_DGRAM:
            return "ok " + str(s.getpeername()[1])
        return s.recv(100).decode()
    except OSError as e:
        return errname(e)
    finally:
        s.close()


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def policy(rules: list[str], records: list[AuditRecord] | None = None) -> Policy:
    return Policy.build("sb-net", addresses=[AddressRule.parse(r) for r in rules],
                        on_record=None if records is None else records.append)


def test_an_allowed_address_connects_and_others_are_refused(server: int) -> None:
    port = server
    records: list[AuditRecord] = []
    v6 = _ipv6()

    def body() -> dict[str, str]:
        out = {
            "allowed": try_connect(socket.AF_INET, ("127.0.0.1", port)),
            "allowed_nonblocking": try_connect(socket.AF_INET, ("127.0.0.1", port),
                                               nonblocking=True),
            "other_v4": try_connect(socket.AF_INET, ("127.0.0.2", port)),
            "other_port": try_connect(socket.AF_INET, ("127.0.0.1", port + 1)),
            "udp_not_named": try_connect(socket.AF_INET, ("127.0.0.1", port), socket.SOCK_DGRAM),
            "unix": try_connect(socket.AF_UNIX, UNIX_PATH),
            "after": try_connect(socket.AF_INET, ("127.0.0.1", port)),
        }
        if v6:
            out["v6"] = try_connect(socket.AF_INET6, ("::1", port))
            out["mapped_allowed"] = try_connect(socket.AF_INET6, ("::ffff:127.0.0.1", port))
            out["mapped_refused"] = try_connect(socket.AF_INET6, ("::ffff:127.0.0.2", port))
        return out

    with policy([f"127.0.0.1:{port}"], records) as pol:
        got = run(pol, body, unnamed=errno.EACCES)
    want = {"allowed": GREETING.decode(), "allowed_nonblocking": "nonblocking " + GREETING.decode(),
            "other_v4": "EACCES", "other_port": "EACCES", "udp_not_named": "EACCES",
            "unix": "EACCES", "after": GREETING.decode()}
    if v6:
        want |= {"v6": "EACCES", "mapped_allowed": GREETING.decode(), "mapped_refused": "EACCES"}
    assert got == want
    allowed = [r for r in records if r.decision == "allowed"]
    assert len(allowed) == (4 if v6 else 3)
    assert allowed[0].rule == f"127.0.0.1:{port}/tcp"
    assert allowed[0].request == f"127.0.0.1 port {port}/tcp"
    assert {r.decision for r in records} == {"allowed", "refused", "unnamed"}


def test_ranges_names_udp_and_failures(server: int) -> None:
    port = server

    def body() -> list[str]:
        return [try_connect(socket.AF_INET, ("127.0.0.1", port)),
                try_connect(socket.AF_INET, ("127.0.0.1", 9), socket.SOCK_DGRAM),
                try_connect(socket.AF_INET, ("127.0.0.1", 1))]

    # a name in a rule stands for what it resolved to; a CIDR range; a UDP port;
    # an allowed address where nothing listens fails as the kernel says
    with policy([f"localhost:{port}", "127.0.0.0/8:9/udp", "127.0.0.1:1"]) as pol:
        assert run(pol, body) == [GREETING.decode(), "ok 9", "ECONNREFUSED"]


def test_unix_sockets_are_the_sandboxs_own_when_unnamed_is_none() -> None:
    with policy(["127.0.0.1:1"]) as pol:
        assert run(pol, lambda: try_connect(socket.AF_UNIX, UNIX_PATH)) == "ENOENT"


def test_a_child_killed_during_a_pending_connect_costs_nothing() -> None:
    # A listener whose accept queue is full drops further SYNs (tcp_abort_on_overflow
    # is 0 by default): a connect to it stays in progress, and the broker must not wait.
    import os

    from tests.broker.harness import Child, open_fds
    from warden.supervisor.broker import transparent

    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    try:
        with policy([f"127.0.0.1:{port}"]) as pol:
            before = open_fds()
            child = Child(lambda: try_connect(socket.AF_INET, ("127.0.0.1", port)))
            broker = transparent.TransparentBroker(child.listener, pol)
            try:
                assert broker.handle(child.next())
                assert len(broker.pending_fds()) == 1  # in progress, the broker free
                child.kill()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, 0)
                broker.ready()  # nothing completed: still pending, nothing answered
                broker.expire(float("inf"))  # its deadline: answered, to a caller gone
                assert broker.pending_fds() == []
            finally:
                broker.close()
                child.close()
            assert open_fds() == before
    finally:
        for c in fillers:
            c.close()
        full.close()


def test_malformed_connects_get_the_kernels_answers(server: int) -> None:
    import ctypes

    from tests.broker.test_broker_transparent_open import transparent_nr

    libc = ctypes.CDLL(None, use_errno=True)
    nr = transparent_nr("connect")

    def raw(fd: int, addr: object, length: int) -> str:
        ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(fd), addr, ctypes.c_int(length))
        return "ok" if ret == 0 else errno.errorcode[ctypes.get_errno()]

    def body() -> dict[str, str]:
        s = socket.socket()
        sin = (ctypes.c_ubyte * 16)(2, 0, server >> 8, server & 0xFF, 127, 0, 0, 1)
        with open("/dev/null", "rb") as f:  # not brokered: the harness' unnamed=None
            not_socket = raw(f.fileno(), sin, 16)
        return {"too_long": raw(s.fileno(), sin, 4096), "too_short": raw(s.fileno(), sin, 1),
                "short_sin": raw(s.fileno(), sin, 8), "bad_pointer": raw(s.fileno(), None, 16),
                "not_a_socket": not_socket, "bad_fd": raw(999, sin, 16),
                "ok": raw(s.fileno(), sin, 16)}

    with policy([f"127.0.0.1:{server}"]) as pol:
        got = run(pol, body)
    assert got == {"too_long": "EINVAL", "too_short": "EINVAL", "short_sin": "EINVAL",
                   "bad_pointer": "EFAULT", "not_a_socket": "ENOTSOCK", "bad_fd": "EBADF",
                   "ok": "ok"}

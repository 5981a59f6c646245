"""The transparent broker on the real kernel: a forked child's own open()s, answered
by the supervisor by policy, and every way around the policy tried."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.broker.harness import Child, errname, open_fds, run
from warden.supervisor.broker import transparent
from warden.supervisor.broker.paths import PathRule
from warden.supervisor.broker.policy import AuditRecord, Policy
from warden.supervisor.sandbox import _sys

libc = ctypes.CDLL(None, use_errno=True)
NR_OPEN, NR_CREAT = 2, 85
AT_FDCWD = -100


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """allowed/ (brokered) and secret/ (not), with the links and kinds an attacker uses."""
    allowed = tmp_path / "allowed"
    secret = tmp_path / "secret"
    (allowed / "sub").mkdir(parents=True)
    secret.mkdir()
    (allowed / "file.txt").write_text("allowed content")
    (allowed / "sub" / "deep.txt").write_text("deep content")
    (secret / "secret.txt").write_text("SECRET")
    (allowed / "esc").symlink_to("../secret")
    (allowed / "abs").symlink_to(secret)
    (allowed / "inner").symlink_to("file.txt")
    os.mkfifo(allowed / "fifo")
    return tmp_path


def policy(rules: list[PathRule], records: list[AuditRecord] | None = None) -> Policy:
    return Policy.build("sb-test", paths=rules,
                        on_record=None if records is None else records.append)


def try_open(path: str | bytes, flags: int = os.O_RDONLY, mode: int = 0o644) -> str:
    """What the child's own open(path) gives: the content read, or the errno's name."""
    try:
        fd = os.open(path, flags, mode)
    except OSError as e:
        return errname(e)
    try:
        if flags & os.O_ACCMODE == os.O_WRONLY:
            os.write(fd, b"written")
            return "ok"
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)


def syscall_read(nr: int, *args: Any) -> str:
    fd = libc.syscall(ctypes.c_long(nr), *args)
    if fd < 0:
        return errno.errorcode[ctypes.get_errno()]
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)


def test_an_allowed_path_opens_with_the_right_content_from_every_open_call(area: Path) -> None:
    path = str(area / "allowed" / "file.txt")
    records: list[AuditRecord] = []

    def body() -> list[str]:
        def openat2() -> str:
            try:
                fd = _sys.openat2(AT_FDCWD, path.encode(), os.O_RDONLY, 0, 0)
            except OSError as e:
                return errname(e)
            with os.fdopen(fd) as f:
                return f.read()
        return [try_open(path), try_open(str(area / "allowed" / "sub" / "deep.txt")),
                syscall_read(NR_OPEN, path.encode(), ctypes.c_int(os.O_RDONLY)),
                openat2(), try_open(path.replace("/allowed/", "/allowed/./sub/../"))]

    with policy([PathRule.read(str(area / "allowed"))], records) as pol:
        got = run(pol, body)
    assert got == ["allowed content", "deep content", "allowed content", "allowed content",
                   "allowed content"]
    assert [r.decision for r in records] == ["allowed"] * 5
    assert records[0].rule == f"{area}/allowed (read)"
    assert records[0].request == path and records[0].via == "transparent"


def test_escapes_fail_and_the_broker_carries_on(area: Path) -> None:
    a = str(area / "allowed")

    def body() -> dict[str, str]:
        return {
            "dotdot": try_open(f"{a}/../secret/secret.txt"),
            "deep_dotdot": try_open(f"{a}/sub/../../secret/secret.txt"),
            "relative_link_out": try_open(f"{a}/esc/secret.txt"),
            "absolute_link_out": try_open(f"{a}/abs/secret.txt"),
            "link_inside": try_open(f"{a}/inner"),
            "write_on_read_rule": try_open(f"{a}/file.txt", os.O_WRONLY),
            "create_on_read_rule": try_open(f"{a}/new.txt", os.O_WRONLY | os.O_CREAT),
            "fifo": try_open(f"{a}/fifo"),
            "fifo_nonblock": try_open(f"{a}/fifo", os.O_RDONLY | os.O_NONBLOCK),
            "directory": try_open(f"{a}/sub"),
            "o_directory": try_open(f"{a}/sub", os.O_RDONLY | os.O_DIRECTORY),
            "o_path": try_open(f"{a}/file.txt", os.O_PATH),
            "missing": try_open(f"{a}/nothing.txt"),
            "trailing_slash": try_open(f"{a}/file.txt/"),
            "after": try_open(f"{a}/file.txt"),
        }

    with policy([PathRule.read(a)]) as pol:
        got = run(pol, body, unnamed=errno.EPERM)
    assert got == {
        "dotdot": "EACCES", "deep_dotdot": "EACCES", "relative_link_out": "EACCES",
        "absolute_link_out": "EACCES", "link_inside": "EACCES",
        "write_on_read_rule": "EACCES", "create_on_read_rule": "EACCES",
        "fifo": "EACCES", "fifo_nonblock": "EACCES", "directory": "EACCES",
        "o_directory": "EACCES", "o_path": "EACCES", "missing": "ENOENT",
        "trailing_slash": "ENOTDIR", "after": "allowed content",
    }


def test_a_rule_with_links_follows_only_links_that_stay_beneath_it(area: Path) -> None:
    a = str(area / "allowed")

    def body() -> list[str]:
        return [try_open(f"{a}/inner"), try_open(f"{a}/esc/secret.txt"),
                try_open(f"{a}/abs/secret.txt")]

    with policy([PathRule(a, frozenset({"read"}), links=True)]) as pol:
        assert run(pol, body) == ["allowed content", "EACCES", "EACCES"]


def test_magic_links_fail_even_under_a_rule_naming_proc(area: Path) -> None:
    # /proc resolved by the supervisor is the supervisor's: "self" there is not the
    # child, which is one more reason no magic link is ever followed.
    def body() -> list[str]:
        me = os.getpid()
        fd = os.open(str(area / "secret" / "secret.txt"), os.O_RDONLY)  # not brokered
        return [try_open("/proc/self/root/etc/hostname"),
                try_open(f"/proc/{me}/root/etc/hostname"),
                try_open(f"/proc/{me}/fd/{fd}"),
                try_open("/proc/thread-self/cwd/x"),
                try_open(f"/proc/{me}/cwd/x")]

    with policy([PathRule("/proc", frozenset({"read"}), links=True)]) as pol:
        got = run(pol, body)
    assert got == ["EACCES"] * 5


def test_devices_are_refused_unless_the_rule_names_them() -> None:
    def body() -> list[str]:
        return [try_open("/dev/null"), try_open("/dev/zero")]

    with policy([PathRule.read("/dev")]) as pol:
        assert run(pol, body) == ["EACCES", "EACCES"]
    with policy([PathRule("/dev/null", frozenset({"read"}), kinds=frozenset({"device"}))]) as pol:
        assert run(pol, body, unnamed=errno.ENOENT) == ["", "ENOENT"]


def test_overlong_and_64k_paths_fail_as_the_kernel_says(area: Path) -> None:
    a = str(area / "allowed")

    def body() -> list[str]:
        return [try_open(a + "/" + "x" * 65536), try_open(a + "/" + "y" * (4096 - len(a))),
                try_open(a + "/" + "z/" * 1000 + "file.txt")]

    with policy([PathRule.read(a)]) as pol:
        assert run(pol, body) == ["ENAMETOOLONG", "ENAMETOOLONG", "ENOENT"]


def test_write_create_and_truncate_need_their_modes(area: Path) -> None:
    a = str(area / "allowed")
    (area / "allowed" / "old.txt").write_text("old old old")

    def body() -> list[str]:
        fd = libc.syscall(ctypes.c_long(NR_CREAT), f"{a}/made.txt".encode(), ctypes.c_int(0o640))
        made = "EFAULT" if fd < 0 else "ok"
        if fd >= 0:
            os.write(fd, b"by creat")
            os.close(fd)
        return [made, try_open(f"{a}/new.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL),
                try_open(f"{a}/new.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL),
                try_open(f"{a}/old.txt", os.O_WRONLY | os.O_TRUNC),
                try_open(f"{a}/old.txt"), try_open(f"{a}/fifo", os.O_WRONLY)]

    with policy([PathRule.write(a)]) as pol:
        got = run(pol, body)
    assert got == ["ok", "ok", "EEXIST", "ok", "written", "EACCES"]
    assert (area / "allowed" / "made.txt").read_text() == "by creat"
    assert (area / "allowed" / "made.txt").stat().st_mode & 0o777 == 0o640 & ~_umask()

    # write without truncate or create
    def body2() -> list[str]:
        return [try_open(f"{a}/old.txt", os.O_WRONLY | os.O_TRUNC),
                try_open(f"{a}/other.txt", os.O_WRONLY | os.O_CREAT),
                try_open(f"{a}/old.txt", os.O_WRONLY | os.O_CREAT)]

    with policy([PathRule(a, frozenset({"read", "write"}))]) as pol:
        assert run(pol, body2) == ["EACCES", "EACCES", "ok"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_unnamed_paths_get_the_answer_the_embedder_chose(area: Path) -> None:
    secret = str(area / "secret" / "secret.txt")

    def body() -> list[str]:
        return [try_open(secret), try_open("relative.txt")]

    with policy([PathRule.read(str(area / "allowed"))]) as pol:
        # None: the sandbox's own call runs (its own rights, as without a broker)
        assert run(pol, body) == ["SECRET", "ENOENT"]
        assert run(pol, body, unnamed=errno.ENOENT) == ["ENOENT", "ENOENT"]


def _rewriting_child(first: bytes, second: bytes) -> tuple[Child, int, int]:
    """A child whose main thread opens a buffer that another thread rewrites when told."""
    go_r, go_w = os.pipe()
    ack_r, ack_w = os.pipe()

    def body() -> str:
        buf = ctypes.create_string_buffer(first, 4096)

        def rewrite() -> None:
            os.read(go_r, 1)
            ctypes.memmove(buf, second + b"\0", len(second) + 1)
            os.write(ack_w, b"k")

        threading.Thread(target=rewrite, daemon=True).start()
        fd = libc.syscall(ctypes.c_long(transparent_nr("openat")), ctypes.c_int(AT_FDCWD),
                          buf, ctypes.c_int(os.O_RDONLY))
        if fd < 0:
            return errno.errorcode[ctypes.get_errno()]
        return os.read(fd, 100).decode()

    child = Child(body)
    os.close(go_r)
    os.close(ack_w)
    return child, go_w, ack_r


def transparent_nr(name: str) -> int:
    return {v: k for k, v in transparent.CALLS.items()}[name]


@pytest.mark.parametrize("first", ["allowed", "secret"])
def test_a_path_rewritten_after_the_read_changes_nothing(area: Path, first: str) -> None:
    allowed = str(area / "allowed" / "file.txt").encode()
    secret = str(area / "secret" / "secret.txt").encode()
    a, b = (allowed, secret) if first == "allowed" else (secret, allowed)
    with policy([PathRule.read(str(area / "allowed"))]) as pol:
        child, go, ack = _rewriting_child(a, b)
        broker = transparent.TransparentBroker(child.listener, pol, unnamed=errno.ENOENT)
        try:
            n = child.next()
            call = broker.read_open(n, "openat")
            os.write(go, b"g")  # another thread of the child rewrites the path now
            assert os.read(ack, 1) == b"k"
            broker.answer_open(call)  # acts on what it read and checked
            transparent.serve(broker, child.listener)
            got = child.result()
        finally:
            child.kill()
            child.close()
            os.close(go)
            os.close(ack)
    assert call.request is not None and call.request.path == a.decode()
    assert got == ("allowed content" if first == "allowed" else "ENOENT")


def test_a_thread_flipping_the_path_never_gets_the_secret(area: Path) -> None:
    allowed = str(area / "allowed" / "file.txt").encode()
    secret = str(area / "secret" / "secret.txt").encode()

    def body() -> dict[str, int]:
        buf = ctypes.create_string_buffer(allowed, 4096)
        stop = threading.Event()

        def flip() -> None:
            while not stop.is_set():
                ctypes.memmove(buf, secret + b"\0", len(secret) + 1)
                ctypes.memmove(buf, allowed + b"\0", len(allowed) + 1)

        t = threading.Thread(target=flip, daemon=True)
        t.start()
        seen: dict[str, int] = {}
        for _ in range(300):
            fd = libc.syscall(ctypes.c_long(transparent_nr("openat")), ctypes.c_int(AT_FDCWD),
                              buf, ctypes.c_int(os.O_RDONLY))
            key = errno.errorcode[ctypes.get_errno()] if fd < 0 else os.read(fd, 100).decode()
            if fd >= 0:
                os.close(fd)
            seen[key] = seen.get(key, 0) + 1
        stop.set()
        t.join()
        return seen

    with policy([PathRule.read(str(area / "allowed"))]) as pol:
        seen = run(pol, body, unnamed=errno.ENOENT)
    assert "SECRET" not in seen
    assert set(seen) <= {"allowed content", "ENOENT"}


def test_a_withdrawn_notification_costs_nothing(area: Path) -> None:
    path = str(area / "allowed" / "file.txt")
    records: list[AuditRecord] = []
    with policy([PathRule.read(str(area / "allowed"))], records) as pol:
        before = open_fds()
        child = Child(lambda: try_open(path))
        broker = transparent.TransparentBroker(child.listener, pol)
        n = child.next()
        child.kill()  # killed mid-call: its open will never return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)
        assert broker.handle(n) is True  # answered nothing, raised nothing
        broker.close()
        child.close()
        assert open_fds() == before
        assert [r.decision for r in records] == []
        # and the supervisor carries on with the next sandbox
        assert run(pol, lambda: try_open(path)) == "allowed content"
    assert [r.decision for r in records] == ["allowed"]


def test_malformed_calls_get_the_kernels_answers(area: Path) -> None:
    a = str(area / "allowed")
    nr_openat, nr_openat2 = transparent_nr("openat"), transparent_nr("openat2")

    def raw(nr: int, *args: Any) -> str:
        fd = libc.syscall(ctypes.c_long(nr), *args)
        if fd < 0:
            return errno.errorcode[ctypes.get_errno()]
        os.close(fd)
        return "ok"

    def body() -> dict[str, Any]:
        path = f"{a}/file.txt".encode()
        how = (ctypes.c_uint64 * 4)(os.O_RDONLY, 0, 0, 0)
        how_extra = (ctypes.c_uint64 * 4)(os.O_RDONLY, 0, 0, 1)

        def with_resolve(p: str, resolve: int) -> str:
            try:
                os.close(_sys.openat2(AT_FDCWD, p.encode(), os.O_RDONLY, 0, resolve))
                return "ok"
            except OSError as e:
                return errname(e)

        fd = libc.syscall(ctypes.c_long(nr_openat), ctypes.c_int(AT_FDCWD), path,
                          ctypes.c_int(os.O_RDONLY))  # no O_CLOEXEC asked
        inheritable = os.get_inheritable(fd)
        os.close(fd)
        fd = os.open(path, os.O_RDONLY)  # Python's open asks for O_CLOEXEC
        python_inheritable = os.get_inheritable(fd)
        os.close(fd)
        return {
            "null_path": raw(nr_openat, ctypes.c_int(AT_FDCWD), ctypes.c_void_p(8),
                             ctypes.c_int(0)),
            "how_too_small": raw(nr_openat2, ctypes.c_int(AT_FDCWD), path, how,
                                 ctypes.c_size_t(16)),
            "how_unknown_field": raw(nr_openat2, ctypes.c_int(AT_FDCWD), path, how_extra,
                                     ctypes.c_size_t(32)),
            "how_bigger_but_zero": raw(nr_openat2, ctypes.c_int(AT_FDCWD), path, how,
                                       ctypes.c_size_t(32)),
            "resolve_no_symlinks": with_resolve(f"{a}/inner", _sys.RESOLVE_NO_SYMLINKS),
            "resolve_beneath": with_resolve(f"{a}/file.txt", 0x08),
            "inheritable_without_cloexec": inheritable,
            "inheritable_with_cloexec": python_inheritable,
        }

    with policy([PathRule(a, frozenset({"read"}), links=True)]) as pol:
        got = run(pol, body)
    assert got == {"null_path": "EFAULT", "how_too_small": "EINVAL",
                   "how_unknown_field": "E2BIG", "how_bigger_but_zero": "ok",
                   "resolve_no_symlinks": "EACCES", "resolve_beneath": "EACCES",
                   "inheritable_without_cloexec": True, "inheritable_with_cloexec": False}


def test_a_caller_out_of_descriptors_gets_emfile_and_nothing_leaks(area: Path) -> None:
    path = str(area / "allowed" / "file.txt")
    records: list[AuditRecord] = []

    def body() -> list[str]:
        import resource

        lowest_free = os.dup(0)  # every fd below it is in use
        os.close(lowest_free)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            full = try_open(path)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return [full, try_open(path)]

    with policy([PathRule.read(str(area / "allowed"))], records) as pol:
        before = open_fds()
        assert run(pol, body) == ["EMFILE", "allowed content"]
        assert open_fds() == before
    assert [(r.decision, r.errno) for r in records] == [("refused", errno.EMFILE),
                                                        ("allowed", 0)]

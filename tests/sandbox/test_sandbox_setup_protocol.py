"""The setup channel: declared messages, decoded strictly; a child that breaks the protocol
gets a setup error naming the supervisor, and the parent carries on."""

from __future__ import annotations

import errno
import os
import time

import pytest

from tests.sandbox.sandbox_util import PERMISSIVE, PY, TEST_PROFILE
from warden.supervisor.sandbox import Outcome, SetupError, build_spec, child, prepare, protocol
from warden.supervisor.sandbox.protocol import (
    CgroupJoined,
    Failed,
    InitPid,
    ListenerFd,
    MapsWritten,
    ReadyForMaps,
    SetupProtocolError,
    SetupStep,
    decode,
    encode,
)


@pytest.mark.parametrize("msg", [
    InitPid(4242), ReadyForMaps(), MapsWritten(), CgroupJoined(), ListenerFd(),
    Failed(SetupStep.MOUNT, errno.EROFS, "bind /a on /b: Read-only file system"),
    Failed(SetupStep.SUPERVISOR, errno.EIO, ""),
])
def test_every_message_survives_its_encoding(msg: protocol.Message) -> None:
    assert decode(encode(msg)) == msg


def test_a_failure_message_is_cut_at_a_character_boundary() -> None:
    got = decode(encode(Failed(SetupStep.EXEC, errno.ENOENT, "é" * 400)))
    assert isinstance(got, Failed)
    assert got.message == "é" * (protocol.MAX_MESSAGE_BYTES // 2)


@pytest.mark.parametrize(("record", "error"), [
    (b"", "an empty record"),
    (b"X", "unknown tag b'X'"),
    (b"Gx", "1 stray bytes after b'G'"),
    (b"P\x01\x00", "a pid record of 2 bytes"),
    (b"P" + (0).to_bytes(4, "little"), "pid 0"),
    (b"P" + (-5).to_bytes(4, "little", signed=True), "pid -5"),
    (b"E\x01", "a failure record of 1 bytes"),
    (b"E\xfa" + (5).to_bytes(4, "little"), "step number 250"),
    (b"E\x00" + (0).to_bytes(4, "little"), "errno 0"),
    (b"E\x00" + (5).to_bytes(4, "little") + b"\xff\xfe", "a failure message that is not UTF-8"),
    (b"E\x00" + (5).to_bytes(4, "little") + b"x" * 301, "a failure record of 306 bytes"),
])
def test_anything_else_is_refused_by_name(record: bytes, error: str) -> None:
    with pytest.raises(SetupProtocolError) as e:
        decode(record)
    assert str(e.value) == error


def test_step_names_are_unique_and_keep_the_ones_reports_use() -> None:
    values = [s.value for s in SetupStep]
    assert len(set(values)) == len(values)
    for kept in ("clone", "session", "keyring", "userns", "ids", "mount", "uts", "net",
                 "rlimits", "fds", "exec", "cgroup", "cgroupns", "caps", "no_new_privs",
                 "pidns", "signals", "landlock", "seccomp", "supervisor"):
        assert SetupStep(kept)


def test_the_docs_list_the_setup_order_as_the_code_runs_it() -> None:
    """docs/sandbox.md's "Setup order" names every step, in the enum's order, and the enum
    is in the order child_setup calls them."""
    import inspect
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "sandbox.md").read_text()
    section = doc.split("## Setup order", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z_]+)` \|", section, re.M)
    assert listed == [s.value for s in SetupStep]
    for fn in (child.child_setup, child._workload):
        called = [SetupStep[n] for n in re.findall(r"\bS\.([A-Z_]+)\b", inspect.getsource(fn))]
        assert len(set(called)) == len(called), "one member per call site"
        assert called == [s for s in SetupStep if s in called]


def _children() -> set[int]:
    """This process's children, zombies included."""
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                found.add(int(name))
    return found


def _start_with_an_init_that_sends(record: bytes, as_pid: bool) -> SetupError:
    """What a zygote does, except that the init (or its cloner) breaks the protocol.
    Afterwards neither the cloner nor the init is left, running or unreaped."""
    before = _children()
    out = os.open(os.devnull, os.O_WRONLY)
    spec = build_spec([PY, "-c", "pass"], TEST_PROFILE, seccomp_filter=PERMISSIVE,
                      stdio=(out, out, out))
    os.close(out)
    launch = prepare(spec)
    helper = os.fork()
    if helper == 0:
        try:
            if as_pid:
                os.write(launch.child_sock, record)
            else:
                go_r, go_w = os.pipe()
                pid = child.clone_init(launch.plan, child._sys.CLONE_PARENT)
                if pid == 0:
                    os.read(go_r, 1)  # after its pid: the parent reads that first
                    os.write(launch.child_sock, record)
                    time.sleep(60)  # until the parent kills it
                    os._exit(0)
                child.announce_init(launch.child_sock, pid)
                os.write(go_w, b"g")
        finally:
            os._exit(0)
    launch.release_child_fds()
    with pytest.raises(SetupError) as e:
        launch.complete(helper)
    assert _children() <= before
    return e.value


@pytest.mark.parametrize("record", [b"P\x01", b"\xff" * 40, b"E\x63" + b"\x00" * 4,
                                    b"P" + (1).to_bytes(4, "little")])
def test_a_malformed_pid_record_is_a_setup_error(record: bytes) -> None:
    st = _start_with_an_init_that_sends(record, as_pid=True).status
    assert st.outcome is Outcome.SETUP_ERROR and st.setup is not None
    assert (st.setup.step, st.setup.errno, st.exit_code) == ("supervisor", errno.EPROTO, 125)


@pytest.mark.parametrize("record", [b"Z", b"L", b"E" + b"\x00" * 5 + b"\xc3"])
def test_an_init_that_breaks_the_protocol_gets_a_setup_error(record: bytes) -> None:
    st = _start_with_an_init_that_sends(record, as_pid=False).status
    assert st.outcome is Outcome.SETUP_ERROR and st.setup is not None
    assert (st.setup.step, st.setup.errno) == ("supervisor", errno.EPROTO)
    assert st.reason.startswith("sandbox setup failed at step 'supervisor' (EPROTO): ")

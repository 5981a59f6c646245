"""A hostile peer writes whatever it likes on a raw socket; each attempt must end in a
BadMessage (or CutOff) naming the reason, deliver nothing, leak no fd, and leave the
bystander peer in the same loop working."""

from __future__ import annotations

import os

import msgspec
import pytest

from tests.ipc.helpers import (
    FrameList,
    call,
    frame,
    hostile_endpoint_reply,
    hostile_reply,
    message,
    mid,
    run_hostile,
    sock_pair_fd,
    tmpfile,
)
from tests.ipc.impls import ServiceImpl, StagedImpl
from warden import ipc
from warden.ipc.wire import KIND_CALL, KIND_ERROR, KIND_MESSAGE, KIND_REPLY


def bad(out: object) -> ipc.BadMessage:
    reason = getattr(out, "reason", None)
    assert isinstance(reason, ipc.BadMessage), f"expected BadMessage, got {reason!r}"
    assert getattr(out, "bad", None) == [reason], "the hook runs exactly once with the error"
    return reason


def test_garbage_bytes() -> None:
    b = bad(run_hostile(lambda: [(b"\xc1\xff\x00garbage", [])]))
    assert b.reason.startswith("invalid envelope: MessagePack data is malformed")
    assert b.method is None


def test_envelope_is_not_an_array() -> None:
    b = bad(run_hostile(lambda: [(msgspec.msgpack.encode({"kind": 0}), [])]))
    assert b.reason == "invalid envelope: Expected `array`, got `object`"


def test_envelope_with_extra_element() -> None:
    data = msgspec.msgpack.encode([0, mid("echo"), 1, {"data": b""}, "extra"])
    b = bad(run_hostile(lambda: [(data, [])]))
    assert b.reason == "invalid envelope: Expected `array` of length 4, got 5"


def test_unknown_kind() -> None:
    b = bad(run_hostile(lambda: [(frame(7, mid("echo"), 1, {"data": b""}), [])]))
    assert b.reason == "invalid envelope: Expected `int` <= 3 - at `$[0]`"
    assert b.field == "$[0]"


def test_truncated_frame() -> None:
    whole = call("echo", 1, {"data": b"x" * 100})
    b = bad(run_hostile(lambda: [(whole[:-10], [])]))
    assert b.reason.startswith("invalid envelope: Input data was truncated")


def test_oversized_frame_is_invalid_even_exactly_at_cap() -> None:
    limits = ipc.Limits(max_frame_bytes=1024)
    at_cap = call("echo", 1, {"data": b"x" * 1000})
    at_cap = at_cap[:-1] + b"x" * (1024 - len(at_cap) + 1)  # pad to exactly 1024 bytes
    assert len(at_cap) == 1024
    b = bad(run_hostile(lambda: [(at_cap, [])], limits=limits))
    assert b.reason == "frame of 1024 bytes is at the 1024-byte cap"
    over = call("echo", 1, {"data": b"x" * 5000})
    b = bad(run_hostile(lambda: [(over, [])], limits=limits))
    assert b.reason == "frame truncated: larger than the 1024-byte cap"


def test_oversized_frame_with_fds_closes_them(tmp_path: object) -> None:
    limits = ipc.Limits(max_frame_bytes=1024)
    over = call("read_file", 1, {"x": "y" * 4000})
    b = bad(run_hostile(lambda: [(over, [tmpfile(tmp_path, "f")])], limits=limits))
    assert b.reason == "frame truncated: larger than the 1024-byte cap"


def test_unknown_method() -> None:
    b = bad(run_hostile(lambda: [(frame(KIND_CALL, 0x12345678, 1, {}), [])]))
    assert b.reason == "unknown method id 0x12345678"


def test_method_of_another_interface_is_unknown() -> None:
    b = bad(run_hostile(lambda: [(call("ping", 1, {"n": 1}, iface="test.Narrow"), [])]))
    assert b.reason.startswith("unknown method id ")


@pytest.mark.parametrize(
    ("payload", "reason", "field"),
    [
        ({"size": 4096}, "Expected `int` <= 1024 - at `$.size`", "$.size"),
        ({"size": -1}, "Expected `int` >= 0 - at `$.size`", "$.size"),
        ({"size": "12"}, "Expected `int`, got `str` - at `$.size`", "$.size"),
        ({}, "Object missing required field `size`", "$"),
        ({"size": 1, "admin": True}, "Object contains unknown field `admin`", "$"),
        ([1], "Expected `object`, got `array`", None),
    ],
)
def test_wrong_arguments(payload: object, reason: str, field: str | None) -> None:
    b = bad(run_hostile(lambda: [(call("alloc", 1, payload), [])], granted={"alloc"}))
    assert (b.interface, b.method, b.reason, b.field) == ("test.Service", "alloc", reason, field)


def test_malformed_point_cannot_be_expressed() -> None:
    b = bad(run_hostile(lambda: [(call("norm", 1, {"p": {"x": 1.0, "y": 2.0}}), [])]))
    assert b.reason == "Object missing required field `z` - at `$.p`"
    b = bad(run_hostile(lambda: [(call("norm", 1, {"p": [1.0, 2.0, 3.0]}), [])]))
    assert b.reason == "Expected `object`, got `array` - at `$.p`"


def test_tagged_union_rejects_unknown_tag() -> None:
    b = bad(run_hostile(lambda: [(call("area", 1, {"shape": {"type": "hexagon"}}), [])]))
    assert b.reason == "Invalid value 'hexagon' - at `$.shape.type`"


def test_bounded_list_and_enum_and_literal() -> None:
    base: dict[str, object] = {
        "name": "n", "color": "red", "mode": "r", "coords": [1, 2, 3], "tags": []
    }
    cases: list[tuple[dict[str, object], str]] = [
        ({"tags": ["a"] * 5}, "Expected `array` of length <= 4 - at `$.tags`"),
        ({"color": "blue"}, "Invalid enum value 'blue' - at `$.color`"),
        ({"mode": "x"}, "Invalid enum value 'x' - at `$.mode`"),
        ({"coords": [1, 2]}, "Expected `array` of length 3, got 2 - at `$.coords`"),
        ({"name": ""}, "Expected `str` of length >= 1 - at `$.name`"),
    ]
    for change, reason in cases:
        payload = {**base, **change}
        b = bad(run_hostile(lambda p=payload: [(call("mix", 1, p), [])]))  # type: ignore[misc]
        assert b.reason == reason


def test_permission_not_granted() -> None:
    b = bad(run_hostile(lambda: [(call("alloc", 1, {"size": 1}), [])], granted=()))
    assert b.reason == "permission 'alloc' not granted"
    assert b.method == "alloc"


def test_permission_checked_before_arguments_are_decoded() -> None:
    b = bad(run_hostile(lambda: [(call("alloc", 1, b"\xc1not msgpack"), [])], granted=()))
    assert b.reason == "permission 'alloc' not granted"


def test_call_sent_as_message_and_message_sent_as_call() -> None:
    b = bad(run_hostile(lambda: [(frame(KIND_MESSAGE, mid("echo"), 0, {"data": b""}), [])]))
    assert b.reason == "echo is a call, sent as a message"
    b = bad(run_hostile(lambda: [(frame(KIND_CALL, mid("log"), 1, {"line": "x"}), [])]))
    assert b.reason == "log is a one-way message, sent as a call"


def test_message_with_request_id() -> None:
    b = bad(run_hostile(lambda: [(frame(KIND_MESSAGE, mid("log"), 5, {"line": "x"}), [])]))
    assert b.reason == "one-way message with request id 5 (must be 0)"


def test_duplicate_request_id() -> None:
    frames: FrameList = [
        (call("echo", 1, {"data": b"a"}), []), (call("echo", 1, {"data": b"b"}), [])
    ]
    out = run_hostile(lambda: frames)
    b = bad(out)
    assert b.reason == "request id 1 repeated or out of order (last was 1; ids must increase)"
    assert len(out.replies) == 1, "the first call was answered, the duplicate was not"


def test_request_id_zero_and_going_backwards() -> None:
    b = bad(run_hostile(lambda: [(call("echo", 0, {"data": b""}), [])]))
    assert b.reason == "request id 0 repeated or out of order (last was 0; ids must increase)"
    frames: FrameList = [
        (call("echo", 5, {"data": b""}), []), (call("echo", 3, {"data": b""}), [])
    ]
    b = bad(run_hostile(lambda: frames))
    assert b.reason == "request id 3 repeated or out of order (last was 5; ids must increase)"


def test_reply_to_a_call_never_made() -> None:
    b = bad(run_hostile(lambda: [(frame(KIND_REPLY, mid("echo"), 1, b"x"), [])]))
    assert b.reason == "reply to request id 1, which is not awaiting a reply"
    b = bad(run_hostile(lambda: [(frame(KIND_ERROR, mid("echo"), 9, {"message": "x"}), [])]))
    assert b.reason == "reply to request id 9, which is not awaiting a reply"


def test_out_of_order_protocol_state() -> None:
    b = bad(run_hostile(lambda: [(call("work", 1, {"n": 1}, "test.Staged"), [])],
                        serve=StagedImpl()))
    assert b.reason == "work not valid in state 'new' (valid in ready)"
    frames: FrameList = [
        (call("hello", 1, {"version": 1}, "test.Staged"), []),
        (call("hello", 2, {"version": 1}, "test.Staged"), []),
    ]
    b = bad(run_hostile(lambda: frames, serve=StagedImpl()))
    assert b.reason == "hello not valid in state 'ready' (valid in new)"
    frames = [
        (call("hello", 1, {"version": 1}, "test.Staged"), []),
        (message("shutdown", {}, "test.Staged"), []),
        (call("work", 2, {"n": 1}, "test.Staged"), []),
    ]
    b = bad(run_hostile(lambda: frames, serve=StagedImpl()))
    assert b.reason == "work not valid in state 'done' (valid in ready)"


def test_extra_fds(tmp_path: object) -> None:
    b = bad(run_hostile(lambda: [
        (call("echo", 1, {"data": b""}), [tmpfile(tmp_path, "a"), tmpfile(tmp_path, "b")])
    ]))
    assert b.reason == "expected 0 fds, got 2"


def test_too_few_fds() -> None:
    b = bad(run_hostile(lambda: [(call("read_file", 1, {}), [])]))
    assert b.reason == "expected 1 fds, got 0"


def test_more_fds_than_the_frame_allows(tmp_path: object) -> None:
    limits = ipc.Limits(max_fds_per_frame=2)
    b = bad(run_hostile(
        lambda: [(call("read_file", 1, {}), [tmpfile(tmp_path, str(i)) for i in range(6)])],
        limits=limits,
    ))
    assert b.reason.startswith("control data truncated")


def test_fifo_passed_as_a_file(tmp_path: object) -> None:
    def build() -> list[tuple[bytes, list[int]]]:
        path = os.path.join(str(tmp_path), "fifo")
        os.mkfifo(path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        return [(call("read_file", 1, {}), [fd])]

    b = bad(run_hostile(build))
    assert b.reason == "fd 0 (f): expected a regular file open for reading, got a FIFO"
    assert b.field == "f"


def test_socket_passed_as_a_file() -> None:
    b = bad(run_hostile(lambda: [(call("read_file", 1, {}), [sock_pair_fd()])]))
    assert b.reason == "fd 0 (f): expected a regular file open for reading, got a socket"


def test_read_only_fd_where_write_was_declared(tmp_path: object) -> None:
    b = bad(run_hostile(
        lambda: [(call("write_file", 1, {"data": b"x"}), [tmpfile(tmp_path, "ro")])]
    ))
    assert b.reason == "fd 0 (f): expected a regular file open for writing, got a read-only fd"


def test_write_only_fd_where_read_was_declared(tmp_path: object) -> None:
    b = bad(run_hostile(
        lambda: [(call("read_file", 1, {}), [tmpfile(tmp_path, "wo", flags=os.O_WRONLY)])]
    ))
    assert b.reason == "fd 0 (f): expected a regular file open for reading, got a write-only fd"


def test_o_path_fd_where_a_file_was_declared(tmp_path: object) -> None:
    b = bad(run_hostile(
        lambda: [(call("read_file", 1, {}), [tmpfile(tmp_path, "p", flags=os.O_PATH)])]
    ))
    assert b.reason == "fd 0 (f): expected a regular file open for reading, got a O_PATH fd"


def test_file_where_directory_declared(tmp_path: object) -> None:
    b = bad(run_hostile(lambda: [(call("list_dir", 1, {}), [tmpfile(tmp_path, "f")])]))
    assert b.reason == "fd 0 (d): expected a directory, got a regular file"


def test_unsealed_memfd_where_sealed_memory_declared() -> None:
    def build() -> list[tuple[bytes, list[int]]]:
        fd = os.memfd_create("x", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.write(fd, b"mutable")
        return [(call("digest", 1, {}), [fd])]

    b = bad(run_hostile(build))
    assert b.reason == (
        "fd 0 (mem): expected a sealed memfd, "
        "got one missing F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE"
    )


def test_plain_file_where_sealed_memory_declared(tmp_path: object) -> None:
    b = bad(run_hostile(lambda: [(call("digest", 1, {}), [tmpfile(tmp_path, "f")])]))
    assert b.reason == "fd 0 (mem): expected a sealed memfd, got a file that does not support seals"


def test_stream_socket_where_a_channel_endpoint_is_expected() -> None:
    # The trusted side calls `narrow` on a peer that answers with a TCP-like stream socket.
    reason = hostile_endpoint_reply(sock_pair_fd)
    assert reason == (
        "returned fd: expected a channel endpoint (AF_UNIX SOCK_SEQPACKET), got AF_UNIX SOCK_STREAM"
    )


def test_empty_frame_is_not_end_of_stream() -> None:
    b = bad(run_hostile(lambda: [(b"", [])]))
    assert b.reason == "empty frame"


def test_nothing_is_delivered_after_a_bad_message() -> None:
    impl = ServiceImpl()
    frames: FrameList = [
        (message("log", {"line": "first"}), []),
        (message("log", {"line": 5}), []),
        (message("log", {"line": "after"}), []),
    ]
    b = bad(run_hostile(lambda: frames, serve=impl))
    assert b.reason == "Expected `str`, got `int` - at `$.line`"
    assert impl.logs == ["first"]


def test_hook_that_raises_does_not_disturb_the_loop() -> None:
    import asyncio

    async def scenario() -> ipc.ChannelError | None:
        a, evil = ipc.channel_pair()

        def hook(_: ipc.BadMessage) -> None:
            raise RuntimeError("embedder bug")

        ch = ipc.attach(a, peer_id="evil", serve=ServiceImpl(), on_bad_message=hook)
        evil.send(b"\xc1")
        reason = await asyncio.wait_for(ch.wait_closed(), 60)
        evil.close()
        return reason

    assert isinstance(asyncio.run(scenario()), ipc.BadMessage)


def test_reply_with_wrong_method_id() -> None:
    reason = hostile_reply(lambda rid: frame(KIND_REPLY, mid("ping", "test.Narrow"), rid, 1))
    assert reason.startswith("reply carries method id ")
    assert reason.endswith("but request 1 called square")


def test_reply_of_wrong_type() -> None:
    reason = hostile_reply(lambda rid: frame(KIND_REPLY, mid("square", "test.Worker"), rid, "9"))
    assert reason == "Expected `int`, got `str`"


def test_duplicate_reply() -> None:
    def two(rid: int) -> bytes:
        return frame(KIND_REPLY, mid("square", "test.Worker"), rid, 9)

    reason = hostile_reply(two, twice=True)
    assert reason == "reply to request id 1, which is not awaiting a reply"


def test_error_reply_too_long() -> None:
    reason = hostile_reply(
        lambda rid: frame(KIND_ERROR, mid("square", "test.Worker"), rid, {"message": "x" * 5000})
    )
    assert reason == "invalid error reply: Expected `str` of length <= 1024 - at `$.message`"



def test_sparse_sealed_memory_over_the_limit() -> None:
    def build() -> FrameList:
        fd = os.memfd_create("sparse", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 1 << 40)  # a terabyte that costs the sender nothing
        import fcntl

        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        return [(call("digest", 1, {}), [fd])]

    b = bad(run_hostile(build))
    assert b.reason == (
        "fd 0 (mem): sealed memory of 1099511627776 bytes is over the 1073741824-byte limit"
    )

"""The blocking front-end, for the child side (and simple tools): one thread, no event loop.

A child opens its channel with `connect_from_env`, serves its interface with
`serve_forever` and calls the other side through `channel.remote`. While a call waits for
its reply, incoming calls and messages are dispatched in order, so both sides may call each
other. Not thread-safe: use one `Channel` from one thread at a time.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

from warden.ipc.channel import (
    CHANNEL_FD_ENV,
    NO_FDS,
    RECV_FLAGS,
    SEND_FLAGS,
    TRUNCATED,
    FrameReader,
    peer_credentials,
    send_frame,
)
from warden.ipc.context import Context
from warden.ipc.dispatch import bind_handlers, failure_message
from warden.ipc.errors import ChannelClosed, ChannelError, PeerError, RemoteError, detached
from warden.ipc.handles import Receiver, Remote, fd_to_int
from warden.ipc.interface import Interface, MethodSpec, interface_of
from warden.ipc.limits import DEFAULT_LIMITS, Limits
from warden.ipc.session import Event, Session
from warden.ipc.wire import KIND_CALL, KIND_ERROR, KIND_REPLY


class _Proxy:
    """Calls the remote interface: ``channel.remote.method(args)`` blocks for the reply."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def __getattr__(self, name: str) -> Callable[..., Any]:
        spec = self._channel._session.remote_spec(name)
        # A partial (C) rather than a closure: one Python frame less per call.
        invoke = functools.partial(self._channel._call, spec)
        setattr(self, name, invoke)
        return invoke


class Channel:
    """A blocking channel end. Build with `connect` or `connect_from_env`."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        serve: Interface | None,
        remote: type[Interface] | None,
        peer_id: str,
        granted: Iterable[str] | None,
        limits: Limits,
        validate_outgoing: bool = False,
    ) -> None:
        sock.setblocking(True)
        self._sock = sock
        serve_iface = interface_of(serve) if serve is not None else None
        if granted is None:
            granted = (
                {s.permission for s in serve_iface.__ipc_methods__.values() if s.permission}
                if serve_iface
                else set()
            )
        self._session = Session(
            peer=peer_id, serve=serve_iface, remote=remote, granted=frozenset(granted),
            limits=limits, validate_outgoing=validate_outgoing,
        )
        self._reader = FrameReader(sock, limits, peer_id)
        self._recv, self._bufs, self._view = self._reader.recv, self._reader.bufs, self._reader.view
        self._anc_size, self._cap = self._reader.anc_size, self._reader.cap
        self._decode = self._session.decode
        self._encode_request = self._session.encode_request
        self._encode_reply = self._session.encode_reply
        self._sock_send = sock.send
        self._handlers = bind_handlers(serve)
        pid, uid, gid = peer_credentials(sock)
        self.context = Context(
            peer_id=peer_id, granted=frozenset(granted), pid=pid, uid=uid, gid=gid,
            interface=serve_iface.__ipc_name__ if serve_iface else None,
        )
        self._replies: dict[int, tuple[int, Any]] = {}
        self.remote: Any = _Proxy(self)
        self.closed = False

    # ---- calling --------------------------------------------------------------------------

    def _send(self, data: bytes, fds: Sequence[int]) -> None:
        try:
            if fds:
                send_frame(self._sock, data, fds)
            else:
                self._sock_send(data, SEND_FLAGS)
        except OSError as e:
            self._send_failed(e)

    def _send_failed(self, e: OSError) -> NoReturn:
        if isinstance(e, BrokenPipeError | ConnectionResetError):
            self.close()
            raise ChannelClosed(f"peer closed the channel: {e}") from None
        if self.closed:
            raise ChannelClosed("channel is closed") from None
        raise e

    def _call(self, spec: MethodSpec, /, *args: Any, **kwargs: Any) -> Any:
        """``remote.<method>(*args)``: send the request, then serve frames until its reply."""
        if self.closed:
            raise ChannelClosed("channel is closed")
        data, fds, rid = self._encode_request(spec, args, kwargs)
        try:
            if fds:
                send_frame(self._sock, data, fds)
            else:
                self._sock_send(data, SEND_FLAGS)  # Channel._send, inlined
        except OSError as e:
            self._send_failed(e)
        if spec.oneway:
            return None
        replies = self._replies
        receive = self._receive
        # Handle frames until our reply arrives: calls from the peer run meanwhile, replies
        # for outer (nested) calls are filed for their callers.
        while rid not in replies:
            try:
                event = receive()
            except BaseException:
                # The error's traceback keeps this frame: let it not keep the last message
                # (a handler that dropped a handle expects it closed).
                event = value = None
                raise
            if event is None:
                raise ChannelClosed(f"peer closed the channel before replying to {spec.name}")
            kind, got_spec, got_rid, value = event
            if kind < KIND_REPLY:
                self._run(kind, got_spec, got_rid, value)
            elif got_rid == rid:
                if kind == KIND_ERROR:
                    raise RemoteError(value)
                return value
            else:
                replies[got_rid] = (kind, value)
        kind, value = replies.pop(rid)
        if kind == KIND_ERROR:
            raise RemoteError(value)
        return value

    # ---- serving --------------------------------------------------------------------------

    def _receive(self) -> Event | None:
        """The next checked event, or None at end of stream; the only receive path.

        On a bad frame the channel is closed and the BadMessage/CutOff raised carries no
        traceback from the decoder: it must not keep the receive buffer or fds alive.
        """
        error: ChannelError | None
        try:
            n, anc, flags, _ = self._recv(self._bufs, self._anc_size, RECV_FLAGS)
            if anc or flags & TRUNCATED or not 0 < n < self._cap:
                got = self._reader.check(n, anc, flags)  # the rare frame: fds, size, EOF
                if got is None:
                    self.close()
                    return None
                return self._decode(*got)
            return self._decode(self._view[:n], NO_FDS)
        except (PeerError, OSError) as e:
            error = self._receive_failed(e)
        got = None  # nothing of the frame stays in this frame's locals
        if error is None:
            return None
        try:
            raise error
        finally:
            del error  # no cycle through this frame

    def _receive_failed(self, e: PeerError | OSError) -> ChannelError | None:
        """Close the channel after a failed receive; the error to raise (None: end of stream).

        A BadMessage/CutOff is raised without the decoder's traceback: it must not keep the
        receive buffer or fds alive for as long as the caller keeps the error.
        """
        self.close()
        if isinstance(e, PeerError):
            return detached(e)
        if isinstance(e, ConnectionResetError):
            return None
        return ChannelClosed(f"receive failed: {e}")

    def _step(self) -> bool:
        """Receive and handle one frame (replies are filed for their caller); False at EOF."""
        if self.closed:
            return False
        event = self._receive()
        if event is None:
            return False
        kind, spec, rid, value = event
        if kind < KIND_REPLY:
            self._run(kind, spec, rid, value)
        else:
            self._replies[rid] = (kind, value)
        return True

    def _run(self, kind: int, spec: MethodSpec, rid: int, args: tuple[Any, ...]) -> None:
        try:
            # `result` stays bound until the frame is sent: a returned handle that nothing
            # else references would otherwise close its fd before sendmsg.
            result = self._handlers[spec.id](self.context, *args)
            if kind != KIND_CALL:
                return
            data, fds = self._encode_reply(spec, rid, result)
        except Exception as exc:
            self._failed(kind, spec, rid, exc)
            return
        try:
            if fds:
                send_frame(self._sock, data, fds)
            else:
                self._sock_send(data, SEND_FLAGS)  # Channel._send, inlined
        except OSError as e:
            result, args = None, ()  # the ChannelClosed raised must not keep handles alive
            self._send_failed(e)

    def _failed(self, kind: int, spec: MethodSpec, rid: int, exc: Exception) -> None:
        """A handler (or encoding its reply) raised: log it; a caller gets an error reply."""
        msg = failure_message(spec, self._session.peer, exc)
        if kind == KIND_CALL:
            self._send(self._session.encode_error(spec, rid, msg), NO_FDS)

    def serve_forever(self) -> None:
        """Handle incoming calls and messages until the peer closes the channel.

        Raises BadMessage/CutOff (channel closed) if the peer breaks the protocol.
        """
        # The receive path of _receive, inlined (the same failure path, _receive_failed):
        # the server half of every round trip, measured slower through the extra call.
        reader = self._reader
        recv, bufs, view = self._recv, self._bufs, self._view
        anc_size, cap = self._anc_size, self._cap
        decode = self._decode
        run = self._run
        replies = self._replies
        handlers, context = self._handlers, self.context
        encode_reply, sock_send = self._encode_reply, self._sock_send
        while not self.closed:
            try:
                n, anc, flags, _ = recv(bufs, anc_size, RECV_FLAGS)
                if anc or flags & TRUNCATED or not 0 < n < cap:
                    got = reader.check(n, anc, flags)
                    if got is None:
                        self.close()
                        return
                    kind, spec, rid, value = decode(*got)
                else:
                    kind, spec, rid, value = decode(view[:n], NO_FDS)
            except (PeerError, OSError) as e:
                error = self._receive_failed(e)
                # The error's traceback keeps this frame: let it not keep the last message (a
                # handler that dropped a handle expects it closed). The receive buffer is let
                # go by close(): FrameReader.release empties `bufs` and releases `view`.
                got = value = result = data = None
                if error is None:  # end of stream
                    return
                try:
                    raise error from None
                finally:
                    del error  # no cycle through this frame
            if kind != KIND_CALL:
                if kind < KIND_REPLY:
                    run(kind, spec, rid, value)
                else:
                    replies[rid] = (kind, value)
                continue
            # Channel._run for a call, inlined: the server half of every round trip. Measured:
            # calling _run, which frees the reply before the next frame is decoded, made
            # 64 KiB round trips ~40% slower (the allocator then hands back colder memory).
            try:
                # `result` stays bound until the frame is sent: a returned handle that nothing
                # else references would otherwise close its fd before sendmsg.
                result = handlers[spec.id](context, *value)
                data, fds = encode_reply(spec, rid, result)
            except Exception as exc:
                self._failed(kind, spec, rid, exc)
                continue
            try:
                if fds:
                    send_frame(self._sock, data, fds)
                else:
                    sock_send(data, SEND_FLAGS)
            except OSError as e:
                value = result = None  # see above
                self._send_failed(e)

    def serve_one(self) -> bool:
        """Handle one incoming frame; False once the channel is closed."""
        return self._step()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._sock.close()
            # Drop the receive buffer: a closed channel someone keeps must not keep it.
            self._reader.release()
            self._bufs, self._view, self._cap = self._reader.bufs, self._reader.view, 0

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    sock: socket.socket | Remote[Any] | Receiver[Any] | int,
    *,
    serve: Interface | None = None,
    remote: type[Interface] | None = None,
    peer_id: str = "supervisor",
    granted: Iterable[str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    validate_outgoing: bool = True,
) -> Channel:
    """A blocking channel over `sock` (a socket, an fd number, or a received endpoint handle).

    A `Remote[I]` handle sets ``remote=I``; a `Receiver[I]` handle requires `serve` to
    implement `I`. `granted` is what the peer may call on `serve`; None grants every
    permission `serve` declares (right for a child, whose peer is the trusted side).
    validate_outgoing: check our own arguments and replies against the declaration before
    sending (a ValueError here rather than being cut off by the peer); costs one extra
    encode and decode per frame, so benchmarks turn it off.
    """
    if isinstance(sock, Remote | Receiver):
        iface = sock.interface
        if isinstance(sock, Remote):
            if remote is not None and remote is not iface:
                raise TypeError(f"endpoint is bound to {iface}, not {remote}")
            remote = iface
        elif serve is None or interface_of(serve) is not iface:
            raise TypeError(f"endpoint expects an implementation of {iface}")
        sock = sock.socket()
    elif not isinstance(sock, socket.socket):
        sock = socket.socket(fileno=fd_to_int(sock))
    if sock.type != socket.SOCK_SEQPACKET or sock.family != socket.AF_UNIX:
        raise ValueError(f"a channel must be an AF_UNIX SOCK_SEQPACKET socket, got {sock!r}")
    return Channel(
        sock, serve=serve, remote=remote, peer_id=peer_id, granted=granted, limits=limits,
        validate_outgoing=validate_outgoing,
    )


def connect_from_env(
    *,
    serve: Interface | None = None,
    remote: type[Interface] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    env_var: str = CHANNEL_FD_ENV,
    validate_outgoing: bool = True,
) -> Channel:
    """Open the channel the supervisor handed us (fd number in $WARDEN_CHANNEL_FD, default 3)."""
    raw = os.environ.get(env_var)
    if raw is None:
        raise RuntimeError(f"${env_var} is not set: not started by a warden supervisor")
    try:
        fd = int(raw)
    except ValueError:
        raise RuntimeError(f"${env_var}={raw!r} is not an fd number") from None
    try:
        os.fstat(fd)
    except OSError as e:
        raise RuntimeError(f"${env_var}={fd}: fd is not open ({e.strerror})") from None
    return connect(
        fd, serve=serve, remote=remote, limits=limits, validate_outgoing=validate_outgoing
    )


__all__ = ["Channel", "connect", "connect_from_env"]


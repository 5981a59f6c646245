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
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from warden.ipc.channel import (
    CHANNEL_FD_ENV,
    NO_FDS,
    SEND_FLAGS,
    Carried,
    FrameReader,
    peer_credentials,
    send_frame,
)
from warden.ipc.context import Context
from warden.ipc.dispatch import bind_handlers, failure_message
from warden.ipc.errors import ChannelClosed, ChannelError, PeerError, RemoteError, detached
from warden.ipc.handles import Receiver, Remote, close_if_handle, fd_to_int
from warden.ipc.interface import Interface, MethodSpec, interface_of
from warden.ipc.limits import DEFAULT_LIMITS, Limits
from warden.ipc.session import Session
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
        self._read = self._reader.read
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

    def _send(self, data: bytes, fds: Carried) -> None:
        """Send one frame; the only send path. `fds` (numbers or their owners) stay
        referenced until sendmsg returns."""
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
        """``remote.<method>(*args)``: send the request, then serve frames until its reply.

        The arguments are this call's own: they (and the fds they own) stay referenced until
        the frame is sent.
        """
        if self.closed:
            raise ChannelClosed("channel is closed")
        data, fds, rid = self._encode_request(spec, args, kwargs)
        if fds:
            self._send(data, fds)
        else:
            try:  # the common frame, as _send's second branch (one Python call less)
                self._sock_send(data, SEND_FLAGS)
            except OSError as e:
                self._send_failed(e)
        if spec.oneway:
            return None
        # Handle frames until our reply arrives: calls from the peer run meanwhile, replies
        # for outer (nested) calls are filed for their callers.
        replies = self._replies
        while rid not in replies:
            if not self._step():
                raise ChannelClosed(f"peer closed the channel before replying to {spec.name}")
        kind, value = replies.pop(rid)
        if kind == KIND_ERROR:
            raise RemoteError(value)
        return value

    # ---- serving --------------------------------------------------------------------------

    def _receive_failed(self, e: PeerError | OSError) -> ChannelError | None:
        """Close the channel after a failed receive; the error to raise (None: end of stream).

        A BadMessage/CutOff is raised without the decoder's traceback: it must not keep the
        receive buffer or fds alive for as long as the caller keeps the error. The peer broke
        the rules, so every handle it gave us that is still open is closed too.
        """
        if isinstance(e, PeerError):
            detached(e)
            self._session.account.close()
            self.close()
            return e
        self.close()
        if isinstance(e, ConnectionResetError):
            return None
        return ChannelClosed(f"receive failed: {e}")

    def _step(self) -> bool:
        """Receive one frame and handle it; False at end of stream. The one receive and
        dispatch path: serve_forever, serve_one and a call waiting for its reply all use it.

        A call or message runs its handler (a call's reply, or error reply, is sent); a reply
        is filed for its caller. The message lives in this frame only: once it returns, what
        the handler let go of is closed, before the next frame is read. On a bad frame the
        channel is closed (with every fd the peer gave us) and the BadMessage/CutOff raised
        carries no traceback from the decoder.
        """
        failure: ChannelError | None
        try:
            got = self._read()
            if got is None:
                self.close()
                return False
            kind, spec, rid, value = self._decode(*got)
        except (PeerError, OSError) as e:
            failure = self._receive_failed(e)
        else:
            got = None  # the frame is a view of the receive buffer: decoded, let it go
            if kind >= KIND_REPLY:
                self._replies[rid] = (kind, value)
                return True
            try:
                try:
                    result = self._handlers[spec.id](self.context, *value)
                    if kind != KIND_CALL:
                        return True
                    # A returned handle is carried in `fds` as itself: open until sent.
                    data, fds = self._encode_reply(spec, rid, result)
                except Exception as exc:  # logged; a caller learns only what CallFailed says
                    msg = failure_message(spec, self._session.peer, exc)
                    if kind != KIND_CALL:
                        return True
                    data, fds = self._session.encode_error(spec, rid, msg), NO_FDS
                result = None
                if fds:
                    self._send(data, fds)
                else:
                    try:  # the common reply, as _send's second branch (one Python call less)
                        self._sock_send(data, SEND_FLAGS)
                    except OSError as e:
                        self._send_failed(e)
            except BaseException:
                value = result = fds = None  # an error the caller keeps must not keep them
                raise
            return True
        got = None  # nor is it kept by the traceback of the error raised below
        if failure is None:
            return False
        try:
            raise failure
        finally:
            del failure  # no cycle through this frame

    def serve_forever(self) -> None:
        """Handle incoming calls and messages until the peer closes the channel.

        Raises BadMessage/CutOff (channel closed) if the peer breaks the protocol.
        """
        step = self._step
        while not self.closed and step():
            pass

    def serve_one(self) -> bool:
        """Handle one incoming frame; False once the channel is closed."""
        return not self.closed and self._step()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """Close the channel. Replies filed for callers that will never take them (a nested
        call's caller unwound) are closed with it: their handles are the peer's."""
        if not self.closed:
            self.closed = True
            self._sock.close()
            # Drop the receive buffer: a closed channel someone keeps must not keep it.
            self._reader.release()
            replies, self._replies = self._replies, {}
            for kind, value in replies.values():
                if kind == KIND_REPLY:
                    close_if_handle(value)

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


"""The asyncio front-end: the trusted side's channel end, one per peer, all in one loop.

Reads happen in a reader callback, at most `Limits.max_reads_per_wakeup` frames per wakeup,
so a flooding peer yields to the others. Sends never block: when the peer's socket is full,
frames wait in a bounded queue; past the bound the peer is cut off (`CutOff`), never waited
for. An invalid frame closes this channel only: the bad-message hook runs, pending calls
fail with `ChannelClosed`, and every other channel in the loop carries on.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from warden.ipc.channel import (
    NO_FDS,
    SEND_FLAGS,
    Carried,
    FrameReader,
    peer_credentials,
    send_frame,
)
from warden.ipc.context import Context
from warden.ipc.dispatch import bind_handlers, failure_message, log_exception
from warden.ipc.errors import (
    BadMessage,
    ChannelClosed,
    ChannelError,
    CutOff,
    PeerError,
    RemoteError,
    detached,
)
from warden.ipc.handles import close_if_handle, fd_to_int
from warden.ipc.interface import Interface, MethodSpec, interface_of
from warden.ipc.limits import DEFAULT_LIMITS, Limits
from warden.ipc.lowlevel import close_all, poller
from warden.ipc.session import Session
from warden.ipc.wire import KIND_CALL, KIND_REPLY

log = logging.getLogger("warden.ipc")


class Reply(Protocol):
    """Where a call's outcome goes: an asyncio.Future, or an object with the same three
    methods that acts on the reply inside the read callback (`AsyncChannel.call_into`)."""

    def done(self) -> bool: ...

    def set_result(self, value: Any, /) -> None: ...

    def set_exception(self, exc: BaseException, /) -> None: ...


class _AsyncProxy:
    """``await channel.remote.method(args)``.

    A call sends its frame at once and returns a Future for the reply (so calls go out in
    the order they are made); a one-way message is sent and returns None.
    """

    def __init__(self, channel: AsyncChannel) -> None:
        self._channel = channel

    def __getattr__(self, name: str) -> Callable[..., Any]:
        spec = self._channel._session.remote_spec(name)
        # A partial (C) rather than a closure: one Python frame less per call.
        invoke = functools.partial(self._channel._send_request, spec)
        setattr(self, name, invoke)
        return invoke


class AsyncChannel:
    """The trusted side of one channel. Build with `attach` inside a running loop."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        loop: asyncio.AbstractEventLoop,
        peer_id: str,
        serve: Interface | None,
        remote: type[Interface] | None,
        granted: frozenset[str],
        context: Context,
        limits: Limits,
        on_bad_message: Callable[[BadMessage], object] | None,
        on_cut_off: Callable[[CutOff], object] | None,
        validate_outgoing: bool = False,
        before_io: Callable[[], object] | None = None,
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self.peer_id = peer_id
        self.context = context
        self.limits = limits
        serve_iface = interface_of(serve) if serve is not None else None
        self._session = Session(
            peer=peer_id, serve=serve_iface, remote=remote, granted=granted, limits=limits,
            validate_outgoing=validate_outgoing,
        )
        self._reader = FrameReader(sock, limits, peer_id)
        self._handlers = bind_handlers(serve)
        self._is_async = {i: inspect.iscoroutinefunction(h) for i, h in self._handlers.items()}
        self._pending: dict[int, Reply] = {}
        self._queue: collections.deque[tuple[bytes, list[int]]] = collections.deque()
        self._queued_bytes = 0
        self._queued_fds = 0  # our copies of fds in queued frames, bounded by max_fds_queued
        self._writing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_bad_message = on_bad_message
        self._on_cut_off = on_cut_off
        self._closed_future: asyncio.Future[ChannelError | None] = loop.create_future()
        self.close_reason: ChannelError | None = None
        self.closed = False
        self.remote: Any = _AsyncProxy(self)
        self._max_reads = limits.max_reads_per_wakeup
        self._read = self._reader.read
        self._decode = self._session.decode
        self._encode_request = self._session.encode_request
        self._encode_reply = self._session.encode_reply
        self._sock_send = sock.send
        self._poll = poller(self._fd)
        self._before_io = before_io
        self._awaited_all = False  # the last frame read answered our last call in flight
        loop.add_reader(self._fd, self._on_readable)

    # ---- reading --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self._before_io is not None:
            # The embedder's urgent work first (the supervisor's watch on workers it has
            # killed), ahead of the frames queued here: in a loop saturated with replies,
            # waiting for its own turn would put it behind every other channel's.
            self._before_io()
        step = self._step
        for i in range(self._max_reads):
            if self.closed:
                return
            if i == 1 and (self._awaited_all or not self._poll(0)):
                # Most wakeups carry one frame: asking poll once whether another waits is far
                # cheaper than the BlockingIOError a recv on an empty socket raises. A peer
                # with more queued is drained until that error (or the per-wakeup bound).
                # Not even that after the reply to our only call in flight: a peer that
                # answers one call at a time has nothing more to say, and should it send
                # more anyway, the socket is still readable and the loop calls us again.
                return
            if not step():
                return

    def _step(self) -> bool:
        """Read and handle one frame; False when there is nothing more to read now.

        The one receive and dispatch path. The message lives in this frame only: once it
        returns, what a handler let go of is closed, before the next frame is read.
        """
        try:
            got = self._read()
            if got is None:
                self._close(None)
                return False
            kind, spec, rid, value = self._decode(*got)
        except BlockingIOError:
            return False
        except PeerError as e:
            self._close(e)
            return False
        except (ConnectionResetError, BrokenPipeError):
            self._close(None)
            return False
        except OSError as e:  # e.g. an endpoint a peer handed us that was never connected
            self._close(None, f"receive failed: {e}")
            return False
        except Exception as e:  # our bug, not the peer's: never let the loop spin on it
            log_exception(e, "ipc channel %r failed", self.peer_id)
            self._close(None, f"internal error: {e}")
            return False
        if kind < KIND_REPLY:
            self._awaited_all = False
            self._dispatch(kind, spec, rid, value)
            return True
        fut = self._pending.pop(rid)  # present: the session checked rid was pending
        self._awaited_all = not self._pending
        if fut.done():  # the caller gave up (cancelled): drop the reply
            close_if_handle(value)
        elif kind == KIND_REPLY:
            fut.set_result(value)
        else:
            fut.set_exception(RemoteError(value))
        return True

    def _dispatch(self, kind: int, spec: MethodSpec, rid: int, args: tuple[Any, ...]) -> None:
        handler = self._handlers[spec.id]
        if self._is_async[spec.id]:
            # Calls are bounded by the session; one-way messages to async handlers would not
            # be, so bound the running handlers of this peer as a whole.
            if len(self._tasks) >= self.limits.max_calls_in_flight:
                for value in args:  # never delivered
                    close_if_handle(value)
                self._close(CutOff(
                    self.peer_id,
                    f"more than {self.limits.max_calls_in_flight} handlers running",
                    limit="max_calls_in_flight",
                ))
                return
            task = self._loop.create_task(self._run_async(handler, kind, spec, rid, args))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        try:
            result = handler(self.context, *args)
        except Exception as exc:
            self._finish(kind, spec, rid, None, exc)
            return
        # _finish's success branch and _send's first, inline (two Python calls less): the
        # supervisor's serving path.
        if kind != KIND_CALL or self.closed:
            return
        try:
            # A returned handle is carried in `fds` as itself: it stays open until sent (or
            # until _send has queued a copy).
            data, fds = self._encode_reply(spec, rid, result)
        except Exception as e:
            self._unencodable(spec, rid, e)
            return
        if not fds and not self._queue:
            try:
                self._sock_send(data, SEND_FLAGS)
                return
            except BlockingIOError:
                pass
            except OSError as e:
                self._send_failed(e)
                return
        self._send(data, fds)

    async def _run_async(
        self, handler: Callable[..., Any], kind: int, spec: MethodSpec, rid: int,
        args: tuple[Any, ...],
    ) -> None:
        try:
            result = await handler(self.context, *args)
        except asyncio.CancelledError:
            if not self.closed and kind == KIND_CALL:
                self._finish(kind, spec, rid, None, RuntimeError("handler cancelled"))
            raise
        except Exception as exc:
            self._finish(kind, spec, rid, None, exc)
            return
        self._finish(kind, spec, rid, result, None)

    def _finish(
        self, kind: int, spec: MethodSpec, rid: int, result: Any, exc: BaseException | None
    ) -> None:
        """A handler ended: a call's reply (or error reply) is sent, a failure logged."""
        if exc is not None:
            msg = failure_message(spec, self.peer_id, exc)
            if kind == KIND_CALL and not self.closed:
                self._send(self._session.encode_error(spec, rid, msg), NO_FDS)
            return
        if kind == KIND_CALL and not self.closed:
            try:
                # A returned handle is carried in `fds` as itself: it stays open until sent
                # (or until _send has queued a copy).
                data, fds = self._encode_reply(spec, rid, result)
            except Exception as e:
                self._unencodable(spec, rid, e)
                return
            self._send(data, fds)

    def _unencodable(self, spec: MethodSpec, rid: int, e: Exception) -> None:
        """The handler returned what its declaration does not allow: our bug, logged."""
        log_exception(e, "cannot encode reply of %s", spec.qualname)
        self._send(self._session.encode_error(spec, rid, "internal error"), NO_FDS)

    # ---- writing --------------------------------------------------------------------------

    def _send_request(
        self, spec: MethodSpec, /, *args: Any, **kwargs: Any
    ) -> asyncio.Future[Any] | None:
        """``remote.<method>(*args)``: send now; a call returns the future of its reply."""
        if self._before_io is not None:
            self._before_io()
        if self.closed:
            raise ChannelClosed(f"channel to {self.peer_id!r} is closed")
        data, fds, rid = self._encode_request(spec, args, kwargs)
        fut: asyncio.Future[Any] | None = None
        if not spec.oneway:
            fut = self._loop.create_future()
            self._pending[rid] = fut
            if not fds and not self._queue:
                try:  # the common call, as _send's first branch (one Python call less)
                    self._sock_send(data, SEND_FLAGS)
                    return fut
                except BlockingIOError:
                    pass
                except OSError as e:
                    self._send_failed(e)
                    return fut
        self._send(data, fds)
        if self.closed and fut is None:  # a call's future already carries ChannelClosed
            raise ChannelClosed(f"channel to {self.peer_id!r} closed: {self.close_reason}")
        return fut

    def call_into(self, spec: MethodSpec, reply: Reply, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> None:
        """Send a call whose reply goes to `reply` (no future of ours, no extra loop turn).

        `reply` is told exactly once: `set_result(value)`, `set_exception(RemoteError)` when
        the peer's handler failed, or `set_exception(ChannelClosed)` when the channel closes
        first; it is not told if `reply.done()` is already true then (a reply is then
        dropped, its handles closed). The pool uses this to hand its worker the next call
        from inside the read callback that brought the reply. Raises ChannelClosed when the
        channel is already closed, or closes during this call's own send (the peer stopped
        receiving: EPIPE; or the queue's bound cut it off): nothing left, `reply` is not
        told. Raises what encoding raises.
        """
        if self._before_io is not None:
            self._before_io()
        if self.closed:
            raise ChannelClosed(f"channel to {self.peer_id!r} is closed")
        if spec.oneway:
            raise ValueError(f"{spec.qualname} is a one-way message, not a call")
        data, fds, rid = self._encode_request(spec, args, kwargs)
        self._send(data, fds)
        if self.closed:  # by its own send: no reply can come, and the caller may go elsewhere
            raise ChannelClosed(f"channel to {self.peer_id!r} closed while sending "
                                f"{spec.qualname}")
        self._pending[rid] = reply  # (no frame is read before this: the reply comes later)

    def remote_spec(self, name: str) -> MethodSpec:
        """The declaration of the peer's method `name` (AttributeError if there is none)."""
        return self._session.remote_spec(name)

    def _send(self, data: bytes, fds: Carried) -> None:
        """Send one frame now, or queue it while the peer's socket is full; the only send path.

        `fds` (numbers or the objects owning them) stay referenced until sent; a queued frame
        holds its own copies, so the caller may close its fds once this returns.
        """
        if not self._queue:
            try:
                if fds:
                    send_frame(self._sock, data, fds)
                else:
                    self._sock_send(data, SEND_FLAGS)
                return
            except BlockingIOError:
                pass
            except OSError as e:
                self._send_failed(e)
                return
        limits = self.limits
        if fds and self._queued_fds + len(fds) > limits.max_fds_queued:
            # Each queued fd is a copy in our own fd table: a peer that calls a method
            # returning a handle and never reads must not make us hold them without bound.
            self._close(CutOff(
                self.peer_id,
                f"peer does not read: more than {limits.max_fds_queued} fds queued for it",
                limit="max_fds_queued",
            ))
            return
        held = [os.dup(fd_to_int(fd)) for fd in fds]  # the caller may close its fds now
        self._queue.append((data, held))
        self._queued_bytes += len(data)
        self._queued_fds += len(held)
        if self._queued_bytes > limits.max_send_queue_bytes:
            self._close(CutOff(
                self.peer_id,
                f"peer does not read: send queue over {limits.max_send_queue_bytes} bytes",
                limit="max_send_queue_bytes",
            ))
            return
        if len(self._queue) > limits.max_send_queue_frames:
            self._close(CutOff(
                self.peer_id,
                f"peer does not read: send queue over {limits.max_send_queue_frames} frames",
                limit="max_send_queue_frames",
            ))
            return
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _send_failed(self, e: OSError) -> None:
        # The peer is gone, or EMSGSIZE: a frame cap above the socket's buffer.
        log.warning("ipc channel %r: send failed: %s", self.peer_id, e)
        self._close(None, f"send failed: {e}")

    def _on_writable(self) -> None:
        queue = self._queue
        while queue:
            data, fds = queue[0]
            try:
                send_frame(self._sock, data, fds)
            except BlockingIOError:
                return
            except OSError as e:
                self._send_failed(e)
                return
            queue.popleft()
            self._queued_bytes -= len(data)
            self._queued_fds -= len(fds)
            close_all(fds)
        self._writing = False
        self._loop.remove_writer(self._fd)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    # ---- closing --------------------------------------------------------------------------

    def _close(self, reason: ChannelError | None, note: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if reason is not None:
            detached(reason)  # kept by the embedder: it must pin no frame, buffer or fd
        self.close_reason = reason
        if isinstance(reason, PeerError):
            # The peer misbehaved: every fd it gave us that is still open is closed now,
            # whoever still references its handle (a handler, a future, a traceback).
            self._session.account.close()
        self._loop.remove_reader(self._fd)
        self._reader.release()
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        for _, fds in self._queue:
            close_all(fds)
        self._queue.clear()
        self._queued_bytes = 0
        self._queued_fds = 0
        self._sock.close()
        why = str(reason) if reason else (note or "channel closed")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ChannelClosed(why))
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        self._closed_future.set_result(reason)
        hook: Callable[[Any], object] | None = None
        if isinstance(reason, BadMessage):
            log.warning("%s", reason)
            hook = self._on_bad_message
        elif isinstance(reason, CutOff):
            log.warning("%s", reason)
            hook = self._on_cut_off
        if hook is not None:
            try:
                hook(reason)
            except Exception as e:
                log_exception(e, "ipc hook for peer %r raised", self.peer_id)

    def close(self) -> None:
        """Close the channel from our side (pending calls fail with ChannelClosed)."""
        self._close(None, "closed locally")

    async def wait_closed(self) -> ChannelError | None:
        """Wait until the channel closes; returns the BadMessage/CutOff that closed it, if any."""
        return await asyncio.shield(self._closed_future)


def attach(
    sock: socket.socket,
    *,
    peer_id: str,
    serve: Interface | None = None,
    remote: type[Interface] | None = None,
    granted: Iterable[str] = (),
    extra: Mapping[str, object] | None = None,
    pid: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    on_bad_message: Callable[[BadMessage], object] | None = None,
    on_cut_off: Callable[[CutOff], object] | None = None,
    validate_outgoing: bool = True,
    before_io: Callable[[], object] | None = None,
) -> AsyncChannel:
    """Attach our end of a channel to the running loop; takes ownership of `sock`.

    peer_id: the embedder's name for the peer (handlers see it in ``ctx.peer_id``).
    serve: the implementation whose methods the peer may call.
    remote: the interface the peer serves (``await channel.remote.method(...)``).
    granted: permissions the peer holds (default: none; methods with a permission fail).
    extra: read-only fields for ``ctx.extra`` (e.g. the child's profile name).
    pid, uid, gid: the peer's pid and ids as the embedder knows them (SO_PEERCRED
        otherwise, which on a socketpair names whoever made the pair: the supervisor).
    on_bad_message / on_cut_off: hooks run once when the peer is cut off.
    validate_outgoing: check our arguments and replies against the declaration before
        sending (ValueError here, not a confused peer); one extra encode+decode per frame.
    before_io: called at the start of every read callback and every call sent (cheap when
        it has nothing to do: it runs once per frame); the supervisor checks there the
        workers it has killed, so their end is reported without waiting for a loop turn.
    """
    loop = asyncio.get_running_loop()
    if sock.type != socket.SOCK_SEQPACKET or sock.family != socket.AF_UNIX:
        raise ValueError(f"a channel must be an AF_UNIX SOCK_SEQPACKET socket, got {sock!r}")
    sock.setblocking(False)
    cred_pid, cred_uid, cred_gid = peer_credentials(sock)
    grant = frozenset(granted)
    serve_iface = interface_of(serve) if serve is not None else None
    context = Context(
        peer_id=peer_id,
        granted=grant,
        pid=pid if pid is not None else cred_pid,
        uid=uid if uid is not None else cred_uid,
        gid=gid if gid is not None else cred_gid,
        interface=serve_iface.__ipc_name__ if serve_iface else None,
        extra=MappingProxyType(dict(extra or {})),
    )
    return AsyncChannel(
        sock, loop=loop, peer_id=peer_id, serve=serve, remote=remote, granted=grant,
        context=context, limits=limits, on_bad_message=on_bad_message, on_cut_off=on_cut_off,
        validate_outgoing=validate_outgoing, before_io=before_io,
    )


__all__ = ["AsyncChannel", "Reply", "attach"]

"""The errors a channel raises, one type per way a channel can end or a call can fail.

Every one is an `IpcError` (this layer's base, under `warden.errors.WardenError`) and,
where one fits, also the `warden.errors` class that says how the caller must react:

    IpcError
    ├── ChannelError
    │   ├── ChannelClosed                     + ChildFailed   the channel (its peer) is gone
    │   ├── PeerError                         + ChildFailed   the peer misbehaved
    │   │   ├── BadMessage                                    an invalid message
    │   │   └── CutOff                                        a quota, or a peer not reading
    │   └── RemoteError                                       the remote handler refused
    ├── CallFailed                                            raised by handlers, not by ipc
    ├── FrameTooLarge      + InvalidInput + ValueError        our own argument is too large
    └── InterfaceError     + InvalidInput + TypeError         a declaration is wrong

The builtin bases are kept so that ``except ValueError`` / ``except TypeError`` written
before this hierarchy still catch what they caught. RemoteError has no reaction class: what
the caller must do depends on the message the remote chose to send.

`BadMessage` and `CutOff` are what the trusted side reports about a peer: the first is an
invalid message (the peer broke the protocol; the supervisor kills it), the second a peer
that exceeded a quota or stopped reading. Both close the channel; nothing is delivered.
"""

from __future__ import annotations

from typing import TypeVar

from warden.errors import ChildFailed, InvalidInput, WardenError

E = TypeVar("E", bound=BaseException)


def detached(exc: E) -> E:
    """`exc` as a plain record: no traceback, cause or context.

    A close reason outlives the frame that raised it (the embedder keeps it, hooks receive
    it). Its traceback would keep that frame and its callers alive, and with them the
    receive buffer, the frame's fds and the handles of the message before it.
    """
    exc.__traceback__ = None
    exc.__cause__ = None
    exc.__context__ = None
    exc.__suppress_context__ = True
    return exc


class IpcError(WardenError):
    """Base class of every error the ipc layer raises (and of `CallFailed`)."""


class ChannelError(IpcError):
    """Base class of every error this package raises about a channel."""


class ChannelClosed(ChannelError, ChildFailed):
    """The channel is closed (by us, by the peer, or after a bad message or a cut-off).

    A ChildFailed: the usual cause is a peer that exited or was killed; a new channel (a new
    child) is the way on.
    """


MAX_REASON = 500  # characters of a reason kept; the rest is counted, not stored


def printable(text: str, limit: int = MAX_REASON) -> str:
    """`text` bounded and with control characters escaped.

    A reason may quote what the peer sent (msgspec names an unknown field as it arrived):
    the embedder keeps and logs it, so a peer must not make it large or forge log lines.
    """
    if len(text) <= limit and text.isprintable():
        return text
    cut = text[:limit]
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return escaped if len(text) <= limit else f"{escaped}... ({len(text)} characters)"


class PeerError(ChannelError, ChildFailed):
    """A peer broke the channel's rules; carries who and why. The channel is closed."""

    def __init__(self, peer: str, reason: str) -> None:
        reason = printable(reason)
        super().__init__(peer, reason)
        self.peer = peer
        self.reason = reason

    def __str__(self) -> str:
        return f"peer {self.peer!r}: {self.reason}"


class BadMessage(PeerError):
    """An invalid message: never delivered; the channel is closed and the peer is to blame.

    `interface` and `method` name what the frame claimed to be (None when the frame could not
    even be attributed to a method), `field` is the path inside the payload that failed (as
    msgspec reports it, e.g. ``$.size``) and `reason` is the full sentence, msgspec's own wording
    for decode errors.
    """

    def __init__(
        self,
        peer: str,
        reason: str,
        *,
        interface: str | None = None,
        method: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(peer, reason)
        self.interface = interface
        self.method = method
        self.field = field

    def __str__(self) -> str:
        where = f" in {self.interface}.{self.method}" if self.method else ""
        return f"bad message from peer {self.peer!r}{where}: {self.reason}"


class CutOff(PeerError):
    """The peer exceeded a quota or did not read what we sent; the channel was closed."""

    def __init__(self, peer: str, reason: str, *, limit: str) -> None:
        super().__init__(peer, reason)
        self.limit = limit

    def __str__(self) -> str:
        return f"peer {self.peer!r} cut off: {self.reason}"


class RemoteError(ChannelError):
    """The remote handler failed; carries only the message the remote chose to send."""


class CallFailed(IpcError):
    """Raise in a handler to fail the call with this message sent back to the caller.

    Any other exception in a handler is logged locally and reported to the caller only as
    ``internal error``, so a trusted handler never leaks its internals to a child.
    """


class FrameTooLarge(IpcError, InvalidInput, ValueError):
    """We tried to send a frame at or over the cap (nothing was sent; the channel is fine)."""


class InterfaceError(IpcError, InvalidInput, TypeError):
    """An interface declaration is wrong (raised when the class is defined, never at runtime)."""

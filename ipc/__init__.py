"""Typed, validated channels between the supervisor and its children.

Declare an interface once (`Interface`, `call`, `message`), attach the trusted end in an
asyncio loop (`attach`), open the child end with `connect_from_env`. Every frame is checked
against the declaration; the first invalid one closes the channel with `BadMessage`.
See docs/ipc.md (guide) and docs/wire-format.md (the bytes).
"""

from warden.ipc.aio import AsyncChannel, attach
from warden.ipc.blocking import Channel, connect, connect_from_env
from warden.ipc.channel import CHANNEL_FD_ENV, channel_pair
from warden.ipc.context import Context
from warden.ipc.errors import (
    BadMessage,
    CallFailed,
    ChannelClosed,
    ChannelError,
    CutOff,
    FrameTooLarge,
    InterfaceError,
    IpcError,
    PeerError,
    RemoteError,
)
from warden.ipc.handles import (
    Directory,
    Handle,
    MemoryWriter,
    ReadFile,
    Receiver,
    Remote,
    SealedMemory,
    Socket,
    WriteFile,
)
from warden.ipc.interface import Interface, call, message
from warden.ipc.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "CHANNEL_FD_ENV",
    "DEFAULT_LIMITS",
    "AsyncChannel",
    "BadMessage",
    "CallFailed",
    "Channel",
    "ChannelClosed",
    "ChannelError",
    "Context",
    "CutOff",
    "Directory",
    "FrameTooLarge",
    "Handle",
    "Interface",
    "InterfaceError",
    "IpcError",
    "Limits",
    "MemoryWriter",
    "PeerError",
    "ReadFile",
    "Receiver",
    "Remote",
    "RemoteError",
    "SealedMemory",
    "Socket",
    "WriteFile",
    "attach",
    "call",
    "channel_pair",
    "connect",
    "connect_from_env",
    "message",
]

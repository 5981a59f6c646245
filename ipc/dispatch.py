"""Running a handler for an incoming call or message, shared by both front-ends."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from warden.ipc.errors import CallFailed
from warden.ipc.interface import Interface, MethodSpec

log = logging.getLogger("warden.ipc")

INTERNAL_ERROR = "internal error"


def bind_handlers(impl: Interface | None) -> dict[int, Callable[..., Any]]:
    """Method id → bound handler, resolved once per channel (not per message)."""
    if impl is None:
        return {}
    return {spec.id: getattr(impl, name) for name, spec in type(impl).__ipc_methods__.items()}


def log_exception(exc: BaseException, message: str, *args: object) -> None:
    """Log `message` and `exc`'s traceback as text.

    A record carrying exc_info keeps the exception, hence every frame it passed through
    (with a handler's handles and our receive buffer) for as long as a logging handler keeps
    the record; text pins nothing.
    """
    text = "".join(traceback.format_exception(exc)).rstrip()
    log.error(message + "\n%s", *args, text)


def failure_message(spec: MethodSpec, peer: str, exc: BaseException) -> str:
    """What the caller learns about a failed handler: CallFailed's text, else nothing."""
    if isinstance(exc, CallFailed):
        return str(exc)
    log_exception(exc, "handler %s for peer %r raised", spec.qualname, peer)
    return INTERNAL_ERROR

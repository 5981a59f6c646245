"""`warden call SOCKET METHOD [ARGS...]`: one call to a `warden serve` service socket.

    warden call /run/warden/thumbs.service thumbs.thumbnail @cat.pgm --json
    warden call @warden-calc calc.square 12
    warden call @warden-calc --list

SOCKET is a path (resolved with no link followed) or @NAME for an abstract
socket. Each ARG is a JSON value for the method's next parameter; a handle
parameter takes @PATH, which this command opens with the caller's rights
(ReadFile: read-only, no links, a regular file; WriteFile: created or
truncated) and passes as an fd. The reply is printed as JSON (bytes as
base64). Exit codes: 0 answered; 1 refused or failed (the reason on stderr:
an error reply, or the service closing the connection); 125 a usage error.

No interface module is imported: the service says which methods this
connection's role may call (warden.describe) and the reply is decoded as
plain MessagePack. The service checks every argument against the declaration;
an argument of the wrong type is a bad message there, and it disconnects.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any, NoReturn

import click
import msgspec

from warden.errors import EXIT_SETUP
from warden.ipc.channel import FrameReader, send_frame
from warden.ipc.errors import BadMessage
from warden.ipc.limits import DEFAULT_LIMITS
from warden.ipc.lowlevel import close_all
from warden.ipc.wire import (
    ENVELOPE_DECODER,
    ERROR_DECODER,
    KIND_CALL,
    KIND_ERROR,
    KIND_MESSAGE,
    method_id,
)
from warden.supervisor.sandbox import hostpath
from warden.supervisor.service import BUILTIN, WIRE_NAME, MethodInfo, Methods, open_socket

EXIT_REFUSED = 1
_encode = msgspec.msgpack.Encoder().encode
_describe_decoder = msgspec.msgpack.Decoder(Methods)


def _fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    click.echo(f"warden call: {message}", err=True)
    sys.exit(code)


class _Raw:
    """Frames on one service connection, without a typed interface on this side."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock, self.address, self.rid = sock, address, 0
        self.reader = FrameReader(sock, DEFAULT_LIMITS, "service")

    def request(self, name: str, params: dict[str, Any], fds: list[int],
                oneway: bool = False) -> tuple[int, Any, list[int]]:
        kind, rid = (KIND_MESSAGE, 0) if oneway else (KIND_CALL, self.rid + 1)
        try:
            send_frame(self.sock, _encode((kind, method_id(WIRE_NAME, name), rid, params)),
                       fds)
        except (ConnectionResetError, BrokenPipeError):  # refused before we sent
            self._closed(name)
        if oneway:
            return KIND_MESSAGE, None, []
        self.rid = rid
        try:
            got = self.reader.read()
        except BadMessage as e:
            _fail(f"{self.address}: the service sent an invalid frame: {e.reason}")
        except (ConnectionResetError, BrokenPipeError):
            got = None
        except TimeoutError:
            _fail(f"{self.address}: no reply to {name}() in time")
        if got is None:
            self._closed(name)
        frame, got_fds = got
        kind, _method, rid, payload = ENVELOPE_DECODER.decode(frame)
        if rid != self.rid:
            close_all(got_fds)
            _fail(f"{self.address}: reply to request {rid}, expected {self.rid}")
        if kind == KIND_ERROR:
            close_all(got_fds)
            return kind, ERROR_DECODER.decode(payload).message, []
        return kind, bytes(payload), list(got_fds)


    def _closed(self, name: str) -> NoReturn:
        _fail(f"{self.address}: the service closed the connection during {name}(): no "
              "role for this uid, over its connection limits, or a call it refused as "
              "malformed (its log says which)")


def _open_arg(path: str, kind: str) -> int:
    try:
        if kind == "ReadFile":
            return hostpath.open_input(os.path.abspath(path), "argument")
        if kind == "WriteFile":
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                           | os.O_CLOEXEC | os.O_NOCTTY, 0o644)
        if kind == "Directory":
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (hostpath.HostPathError, OSError) as e:
        raise click.UsageError(f"@{path}: {getattr(e, 'strerror', None) or e}") from None
    raise click.UsageError(f"a {kind} parameter cannot be given on the command line")


def _arguments(info: MethodInfo, args: tuple[str, ...]) -> tuple[dict[str, Any], list[int]]:
    if len(args) > len(info.params):
        raise click.UsageError(f"{info.name} takes {len(info.params)} argument(s), got "
                               f"{len(args)}: {info.signature}")
    params: dict[str, Any] = {}
    fds: list[int] = []
    for p, text in zip(info.params, args, strict=False):
        if p.handle:
            if not text.startswith("@"):
                raise click.UsageError(f"{p.name} is a {p.handle}: give @PATH")
            fds.append(_open_arg(text[1:], p.handle))
            continue
        try:
            params[p.name] = json.loads(text)
        except ValueError:
            close_all(fds)
            raise click.UsageError(f"{p.name}: {text!r} is not a JSON value (a string is "
                                   "written \"...\", quoted for the shell too)") from None
    missing = [p.name for p in info.params[len(args):] if not p.optional]
    if missing:
        close_all(fds)
        raise click.UsageError(f"{info.name}: missing {', '.join(missing)}: {info.signature}")
    return params, fds


@click.command("call")
@click.argument("address", metavar="SOCKET")
@click.argument("method", required=False)
@click.argument("args", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="print the reply as one line of JSON")
@click.option("--list", "listing", is_flag=True, help="list the methods your role may call")
@click.option("--server-uid", type=int, multiple=True,
              help="accept a server running as this uid (default: you or root)")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="seconds to wait for the reply")
def call_command(address: str, method: str | None, args: tuple[str, ...], as_json: bool,
                 listing: bool, server_uid: tuple[int, ...], timeout: float) -> None:
    """Call METHOD (POOL.METHOD) on a `warden serve` service socket; print the reply."""
    if method is None and not listing:
        raise click.UsageError("give METHOD (see --list)")
    try:
        sock = open_socket(address, server_uids=server_uid or None, timeout=timeout)
    except hostpath.HostPathError as e:
        _fail(str(e), EXIT_SETUP)
    except OSError as e:
        _fail(f"{address}: cannot connect: {e.strerror or e}")
    with sock:
        sock.settimeout(timeout)
        raw = _Raw(sock, address)
        kind, payload, _ = raw.request(f"{BUILTIN}.describe", {}, [])
        if kind == KIND_ERROR:
            _fail(f"{address}: describe refused: {payload}")
        methods = {m.name: m for m in _describe_decoder.decode(payload)}
        if listing:
            for m in methods.values():
                click.echo(m.signature)
            return
        assert method is not None
        info = methods.get(method)
        if info is None:
            _fail(f"{address}: your role may not call {method!r}; it may call: "
                  f"{', '.join(sorted(methods))}")
        params, fds = _arguments(info, args)
        try:
            kind, payload, got = raw.request(method, params, fds, info.oneway)
        finally:
            close_all(fds)
    if kind == KIND_ERROR:
        _fail(f"{method}: {payload}")
    if got:
        close_all(got)
        value: Any = {"handle": info.returns_handle or "fd"}
    else:
        value = None if payload is None else msgspec.msgpack.decode(payload)
        if method == f"{BUILTIN}.status" and isinstance(value, str):
            value = json.loads(value)  # the snapshot travels as JSON text
    if as_json:
        click.echo(msgspec.json.encode(value).decode())
    else:
        click.echo(json.dumps(json.loads(msgspec.json.encode(value)), indent=2))

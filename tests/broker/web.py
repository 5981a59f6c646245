"""A page served on the host's 127.0.0.1, for the tests where a sandboxed program
fetches it through the broker."""

from __future__ import annotations

import contextlib
import http.server
import select
import socket
import threading
from collections.abc import Iterator

PAGE = b"served on the host side"

PY = "/usr/bin/python3"  # the sandbox's own interpreter (the default profile binds /usr)

# An unmodified program: argv[1] paths to open and argv[2] URLs to fetch (each
# comma-separated, either may be empty); one line per attempt: what it read or
# fetched, or the errno it got.
PROGRAM = """
import errno, sys, urllib.request
def attempt(what, f):
    try:
        print(what, "ok", f())
    except OSError as e:
        e = getattr(e, "reason", e)
        print(what, "failed", errno.errorcode.get(getattr(e, "errno", 0) or 0, repr(e)))
for path in filter(None, sys.argv[1].split(",")):
    attempt("open", lambda: open(path).read().strip())
for url in filter(None, sys.argv[2].split(",")):
    attempt("fetch", lambda: urllib.request.urlopen(url, timeout=20).read().decode())
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving() -> Iterator[int]:
    """A server answering PAGE to every GET while the block runs; yields its port."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()


GREETING = b"hello from the host side"


@contextlib.contextmanager
def greeter() -> Iterator[int]:
    """A host-side TCP server on 127.0.0.1 sending GREETING to each connection, while
    the block runs; yields its port."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if select.select([lsock], [], [], 0.05)[0]:
                conn, _addr = lsock.accept()
                with conn:
                    conn.sendall(GREETING)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield lsock.getsockname()[1]
    finally:
        stop.set()
        t.join()
        lsock.close()

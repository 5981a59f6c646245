"""A page served on the host's 127.0.0.1, for the tests where a sandboxed program
fetches it through the broker."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator

PAGE = b"served on the host side"


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

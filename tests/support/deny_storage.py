"""A storage endpoint on loopback that refuses everything with 403 (clients do not
retry a 403): where a test points one host's or one client's writes to make them fail
from outside.

    with deny_server() as url:
        env["TENSORSTORE_GCS_HTTP_URL"] = url
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator


class _DenyEverything(http.server.BaseHTTPRequestHandler):
    def _deny(self) -> None:
        body = b'{"error": {"code": 403, "message": "denied by the test"}}'
        self.send_response(403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _deny

    def log_message(self, format: str, *args: object) -> None:
        del format, args


@contextlib.contextmanager
def deny_server() -> Iterator[str]:
    """Serves 403s on a free port while the block runs; yields its http:// URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DenyEverything)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

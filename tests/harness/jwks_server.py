"""A loopback JWKS endpoint standing in for an identity provider, for remote-JWKS tests.

It serves whatever key set the test sets, can be made to fail (to check the filter keeps its
last good set), and counts the fetches it answered.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JWKS_PATH = "/.well-known/jwks.json"


class JwksServer:
    def __init__(self, jwks: dict | None = None, path: str = JWKS_PATH):
        self.path = path
        self._lock = threading.Lock()
        self._jwks = jwks or {"keys": []}
        self._status = 200
        self._fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status, body = server._answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="jwks-server", daemon=True)
        self._thread.start()

    def _answer(self, path: str) -> tuple[int, bytes]:
        with self._lock:
            if path.split("?", 1)[0] != self.path:
                return 404, b'{"error":"not found"}'
            self._fetches += 1
            if self._status != 200:
                return self._status, b'{"error":"unavailable"}'
            return 200, json.dumps(self._jwks).encode()

    def set_jwks(self, jwks: dict) -> None:
        with self._lock:
            self._jwks = jwks

    def set_status(self, status: int) -> None:
        """Answer every fetch with `status` (200 serves the key set again)."""
        with self._lock:
            self._status = status

    @property
    def fetches(self) -> int:
        with self._lock:
            return self._fetches

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

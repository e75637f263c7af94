"""A loopback HTTP endpoint for the demo's `http` steps, failing deterministically at a given rate."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

__all__ = ["WebhookServer"]


class WebhookServer:
    """Answers 200 with a JSON receipt, or 503 for a deterministic share (`?fail_rate=`) of requests.

    Whether request n for a given body fails depends only on (path, body, n).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        seen: Counter[bytes] = Counter()
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = url.path.encode() + b"\0" + body
                with lock:
                    seen[key] += 1
                    n = seen[key]
                rate = float(parse_qs(url.query).get("fail_rate", ["0"])[0])
                draw = int.from_bytes(hashlib.sha256(key + str(n).encode()).digest()[:4], "big") / 2**32
                status = 503 if draw < rate else 200
                payload = json.dumps({"received": len(body), "attempt": n, "status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook")

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> WebhookServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

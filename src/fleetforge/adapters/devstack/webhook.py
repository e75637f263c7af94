"""A loopback HTTP endpoint for the demo's `http` steps, failing deterministically at a given rate."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from urllib.parse import parse_qs

from fleetforge.adapters.http.server import BackgroundServer, BodyTooLarge, Receive, Scope, Send, read_body

__all__ = ["WebhookServer"]

MAX_BODY = 1024 * 1024


class WebhookServer:
    """Answers 200 with a JSON receipt, or 503 for a deterministic share (`?fail_rate=`) of requests.

    Whether request n for a given body fails depends only on (path, body, n).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._seen: Counter[bytes] = Counter()
        self._lock = threading.Lock()
        self._server = BackgroundServer(self._app, host=host, port=port, name="webhook")

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            body = await read_body(receive, "", limit=MAX_BODY)
            status, payload = self._answer(scope["path"], scope["query_string"].decode("latin-1"), body)
        except BodyTooLarge as exc:
            status, payload = 413, json.dumps({"error": str(exc)}).encode()
        except ValueError:
            status, payload = 400, b'{"error": "fail_rate: expected a number"}'
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def _answer(self, path: str, query: str, body: bytes) -> tuple[int, bytes]:
        key = path.encode() + b"\0" + body
        with self._lock:
            self._seen[key] += 1
            n = self._seen[key]
        rate = float(parse_qs(query).get("fail_rate", ["0"])[0])
        draw = int.from_bytes(hashlib.sha256(key + str(n).encode()).digest()[:4], "big") / 2**32
        status = 503 if draw < rate else 200
        return status, json.dumps({"received": len(body), "attempt": n, "status": status}).encode()

    @property
    def base_url(self) -> str:
        return self._server.url.rstrip("/")

    def start(self) -> WebhookServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

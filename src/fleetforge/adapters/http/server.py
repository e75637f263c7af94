"""One background HTTP server for every FleetForge listener: an ASGI app served by uvicorn from a thread.

uvicorn does the HTTP/1.1 work (chunked bodies, keep-alive, `Expect: 100-continue`, pipelining); this module
adds what every listener of ours must have (DESIGN §9):

- loopback by default; the port is bound before `start` returns, so port 0 works and a busy port is a
  `ConfigError` naming the flag to change;
- a `Host` check against DNS rebinding: IP literals, `localhost` and the names the operator allows pass;
  any other name gets 421 before the app sees the request;
- `read_body`, which limits both the bytes on the wire and the bytes after `Content-Encoding` is undone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final

import uvicorn

from fleetforge.domain import envparse
from fleetforge.domain.errors import ConfigError

__all__ = [
    "ALLOWED_HOSTS_ENV",
    "ASGIApp",
    "BackgroundServer",
    "BodyTooLarge",
    "HostCheck",
    "UnsupportedEncoding",
    "read_body",
]

log = logging.getLogger("fleetforge.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ALLOWED_HOSTS_ENV: Final = "FLEETFORGE_ALLOWED_HOSTS"
_LOCAL_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class BodyTooLarge(Exception):
    """A request body is over its limit, on the wire or once decompressed."""

    def __init__(self, limit: int, decoded: bool) -> None:
        where = "once decompressed" if decoded else "as sent"
        super().__init__(f"request body is over the limit of {limit} bytes {where}")
        self.limit = limit


class UnsupportedEncoding(Exception):
    """A request's Content-Encoding is not one this server decodes."""


def _host_name(header: str) -> str:
    """The name part of a Host header value: without the port, brackets stripped, lower case."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """ASGI middleware answering 421 to a request whose Host is a name the operator did not allow.

    IP literals cannot be rebound by DNS, so they always pass; names pass when they are `localhost`, this
    machine's host name, in `allowed` or in FLEETFORGE_ALLOWED_HOSTS (comma-separated; `*` allows every
    name, for operators behind their own proxy).
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        names = [*allowed, *envparse.comma_list(os.environ.get(ALLOWED_HOSTS_ENV, ""), ALLOWED_HOSTS_ENV),
                 socket.gethostname()]
        self.allowed = frozenset(_host_name(a) for a in names if a.strip()) | _LOCAL_NAMES

    def permits(self, header: str | None) -> bool:
        """Whether a request with this Host header may reach the app."""
        if header is None:
            return True  # HTTP/1.0 without Host: nothing for a browser to rebind
        name = _host_name(header)
        return "*" in self.allowed or name in self.allowed or _is_ip(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
            if not self.permits(host):
                body = (
                    f"Host {host!r} is not allowed: use an IP address or localhost, or add the "
                    "name to FLEETFORGE_ALLOWED_HOSTS\n"
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 421,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _decoder(encoding: str) -> Any:
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return None
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if name == "deflate":
        return zlib.decompressobj()
    raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none")


async def read_body(receive: Receive, encoding: str, *, limit: int) -> bytes:
    """The whole request body with `encoding` undone; BodyTooLarge past `limit` bytes either way.

    Decompression is bounded as it goes, so a small compressed bomb never expands in memory.
    """
    decoder = _decoder(encoding)
    raw = 0
    out = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client disconnected")
        chunk: bytes = message.get("body", b"")
        more = bool(message.get("more_body"))
        raw += len(chunk)
        if raw > limit:
            raise BodyTooLarge(limit, decoded=False)
        if decoder is None:
            out += chunk
        else:
            try:
                out += decoder.decompress(chunk, limit + 1 - len(out))
            except zlib.error as exc:
                raise UnsupportedEncoding(f"cannot decode the {encoding} body: {exc}") from None
            if decoder.unconsumed_tail:
                raise BodyTooLarge(limit, decoded=True)
        if len(out) > limit:
            raise BodyTooLarge(limit, decoded=decoder is not None)
    return bytes(out)


class BackgroundServer:
    """Serves `app` on `host:port` from a daemon thread; `start` returns once it accepts connections."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "http",
        allowed_hosts: Iterable[str] = (),
        port_flag: str = "--port",
        keep_alive_s: int = 5,
        max_connections: int | None = 256,
    ) -> None:
        self.name = name
        self._sock = self._bind(host, port, name, port_flag)
        config = uvicorn.Config(
            HostCheck(app, allowed_hosts),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_keep_alive=keep_alive_s,
            limit_concurrency=max_connections,
            server_header=False,
            date_header=True,
            h11_max_incomplete_event_size=64 * 1024,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._failed: BaseException | None = None

    @staticmethod
    def _bind(host: str, port: int, name: str, flag: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP, and
        # with Nagle on, a keep-alive response written in two parts waits ~40 ms for the client's delayed ACK
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            # with SO_REUSEADDR two processes may both bind a port no one listens on yet; the second to
            # listen is the one refused (two workers starting at once on the default metrics port)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot serve {name} on {host}:{port}: {exc.strerror or exc}; pass another {flag}"
            ) from None
        sock.set_inheritable(True)
        return sock

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def _serve(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported by start/stop
            self._failed = exc
            log.error("%s server stopped: %s", self.name, exc)

    def start(self, timeout_s: float = 10.0) -> BackgroundServer:
        """Start serving; ConfigError when the server does not come up within `timeout_s`."""
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if self._failed is not None or not self._thread.is_alive():
                raise ConfigError(f"the {self.name} server failed to start: {self._failed}")
            if waited > timeout_s:
                raise ConfigError(f"the {self.name} server did not start within {timeout_s:g} s")
            threading.Event().wait(0.01)
            waited += 0.01
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish for up to `timeout_s`, close the socket."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(1.0)
        self._sock.close()

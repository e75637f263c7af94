"""The one background HTTP server's listening socket says it is TCP, so asyncio disables Nagle on every
connection it accepts (keep-alive answers are not held back for the client's delayed ACK); a port another
process starts listening on between our bind and listen is a clear ConfigError, as a busy port is."""

from __future__ import annotations

import socket

import pytest

from fleetforge.adapters.http.server import BackgroundServer, Receive, Scope, Send
from fleetforge.domain.errors import ConfigError


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_listening_socket_is_tcp_so_accepted_connections_get_nodelay() -> None:
    server = BackgroundServer(app, port=0)
    try:
        assert server._sock.proto == socket.IPPROTO_TCP  # accepted sockets inherit it; asyncio checks it
    finally:
        server._sock.close()


def test_losing_the_race_between_bind_and_listen_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # another process starting on the same port
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    other.bind(("127.0.0.1", 0))
    port = other.getsockname()[1]
    listen = socket.socket.listen

    def other_listens_first(sock: socket.socket, backlog: int = 128) -> None:
        if sock is not other:
            listen(other, 8)  # the kernel now refuses our listen with EADDRINUSE
        listen(sock, backlog)

    monkeypatch.setattr(socket.socket, "listen", other_listens_first)
    try:
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}: .*; pass another --port"):
            BackgroundServer(app, port=port, name="metrics")
    finally:
        other.close()

"""The one background HTTP server's listening socket says it is TCP, so asyncio disables Nagle on every
connection it accepts (keep-alive answers are not held back for the client's delayed ACK)."""

from __future__ import annotations

import socket

from fleetforge.adapters.http.server import BackgroundServer, Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_listening_socket_is_tcp_so_accepted_connections_get_nodelay() -> None:
    server = BackgroundServer(app, port=0)
    try:
        assert server._sock.proto == socket.IPPROTO_TCP  # accepted sockets inherit it; asyncio checks it
    finally:
        server._sock.close()

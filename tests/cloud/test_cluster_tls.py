"""Cluster routes are TLS with certificates from the cloud's CA, both ways: a route that
speaks plain TCP, or TLS without the route certificate, is refused; one with it gets in."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.pki import ensure_route_cert
from gateway.servers import NatsCluster
from tests.helpers import cloud_security

CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"name":"intruder"}\r\nPING\r\n'


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    c = NatsCluster(tmp_path / "cluster", cloud_security(tmp_path))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def _read_until_closed(reader: asyncio.StreamReader, limit_s: float = 10.0) -> bytes:
    got = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while b"PONG" not in got and loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(4096), deadline - loop.time())
        except (TimeoutError, ConnectionError, ssl.SSLError):
            break
        if not chunk:
            break
        got += chunk
    return got


async def _route(port: int, tls: ssl.SSLContext | None) -> bytes:
    """Open a route to `port` as a would-be peer: all it says to CONNECT + PING. A TLS
    route starts with the handshake (the server sends its INFO only inside TLS)."""
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="127.0.0.1" if tls else None
        )
    except (ConnectionError, ssl.SSLError):
        return b""
    try:
        writer.write(CONNECT)
        await writer.drain()
        return await _read_until_closed(reader)
    except (ConnectionError, ssl.SSLError):
        return b""
    finally:
        writer.close()


async def test_routes_need_tls_and_the_route_certificate(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    port = cluster.route_ports[0]
    assert await _route(port, None) == b""  # plain TCP: not a word from the server
    ca = cluster.security.tls.ca
    anonymous = ssl.create_default_context(cafile=str(ca))  # TLS, but no client certificate
    assert await _route(port, anonymous) == b""
    # The control: with the route certificate the server talks (its INFO, then its verdict
    # on this fake peer's CONNECT), so the silences above are TLS refusals.
    route = ensure_route_cert(ca.parent)
    peer = ssl.create_default_context(cafile=str(ca))
    peer.load_cert_chain(route.cert, route.key)
    assert b'INFO {"server_id"' in await _route(port, peer)

"""Fixtures that chain: temporary dir -> real nats-server -> client -> JetStream.

Servers are real processes on free loopback ports (`-1`), ready when their log says so,
stopped by PID at the end of each test. The cloud server runs on the secure defaults
(TLS required, JWT identities: gateway/security.py), as `gateway cloud up` does; `nc` is
the operators' `admin` identity, agents get their own (`tests.helpers.enroll`).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from cloud.streams import ensure_streams
from gateway.config import StreamSettings
from gateway.connect import connect
from gateway.servers import NatsServer
from tests.helpers import cloud_security


@pytest.fixture
async def cloud_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "cloud", name="cloud", security=cloud_security(tmp_path))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def edge_broker(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """The default edge broker: nats-server with its MQTT listener."""
    server = NatsServer(tmp_path / "edge", name="edge", mqtt=True)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def nc(cloud_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(cloud_server.client("admin"), "test")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def js(nc: NatsClient) -> JetStreamContext:
    context = nc.jetstream()
    await ensure_streams(context, StreamSettings())
    return context


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )

"""Fixtures that chain: temporary dir -> real nats-server -> client -> JetStream.

Servers are real processes on free loopback ports (`-1`), ready when their log says so,
stopped by PID at the end of each test.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from cloud.streams import ensure_streams
from gateway.config import StreamSettings
from gateway.servers import NatsServer


@pytest.fixture
async def cloud_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "cloud", name="cloud")
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
    client = await nats.connect(cloud_server.url, max_reconnect_attempts=-1)
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

"""NATS connections for the cloud-side processes and tools."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError


@contextlib.asynccontextmanager
async def nats_connection(url: str, name: str) -> AsyncIterator[NatsClient]:
    # `url` may list several servers (a cluster), comma-separated.
    nc = await nats.connect(
        url.split(","),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
    )
    try:
        yield nc
    finally:
        with contextlib.suppress(NatsError, TimeoutError, OSError):
            await nc.drain()

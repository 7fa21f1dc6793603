"""Run a real uplink until the buffer holds no batch (shared by the drain tests)."""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client as NatsClient

from edge.buffer import SqliteBuffer
from edge.uplink import Uplink
from tests.helpers import eventually


async def drain_until_empty(
    uplink: Uplink, buf: SqliteBuffer, nc: NatsClient, timeout: float
) -> None:
    async def buffered() -> int:
        return buf.stats().batches

    task = asyncio.create_task(uplink.run(nc))
    try:
        await eventually(buffered, lambda n: n == 0, timeout=timeout)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

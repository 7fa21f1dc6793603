"""Live window updates shared between clients: one KV watcher per key filter.

Every SSE client of `/api/live` with the same filter reads from one `LiveFeed`: a single
JetStream consumer (a KV watch of `AGG_LATEST`) whose updates are copied into each
client's bounded queue. The feed keeps the latest value of each key, so a client joining
an existing feed first gets the current values, as with its own watcher. The last client
to leave stops the watcher, and the server removes its consumer `CONSUMER_IDLE_S` later.
A client too slow to drain its queue is dropped, not the feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from cloud.errors import TooManyClients
from gateway import subjects

log = logging.getLogger(__name__)
CONSUMER_IDLE_S = 2.0
CLIENT_QUEUE = 1024  # updates a client may fall behind by before it is dropped


@dataclass(eq=False)
class LiveFeed:
    key_filter: str
    latest: dict[str, bytes] = field(default_factory=dict)
    clients: set[asyncio.Queue[bytes | None]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class LiveHub:
    """The feeds of one HTTP server, and the cap on clients across all of them."""

    def __init__(self, nc: NatsClient, max_clients: int) -> None:
        self._nc = nc
        self.max_clients = max_clients
        self._feeds: dict[str, LiveFeed] = {}

    @property
    def clients(self) -> int:
        return sum(len(f.clients) for f in self._feeds.values())

    @property
    def feeds(self) -> int:
        return len(self._feeds)

    @contextlib.asynccontextmanager
    async def subscribe(self, key_filter: str) -> AsyncIterator[asyncio.Queue[bytes | None]]:
        """A queue of record JSON for `key_filter`: current values first, then updates;
        None if the client fell too far behind. Raises `TooManyClients` at the cap."""
        if self.clients >= self.max_clients:
            raise TooManyClients(self.max_clients)
        feed = self._feeds.get(key_filter)
        if feed is None:
            feed = self._feeds[key_filter] = LiveFeed(key_filter)
            feed.task = asyncio.create_task(self._follow(feed), name=f"live:{key_filter}")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_QUEUE)
        for value in list(feed.latest.values()):
            queue.put_nowait(value)
        feed.clients.add(queue)
        try:
            yield queue
        finally:
            feed.clients.discard(queue)
            if not feed.clients:
                await self._close(feed)

    async def _close(self, feed: LiveFeed) -> None:
        if self._feeds.get(feed.key_filter) is feed:
            del self._feeds[feed.key_filter]
        if feed.task is not None:
            feed.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed.task

    async def aclose(self) -> None:
        for feed in list(self._feeds.values()):
            for queue in feed.clients:
                _offer(queue, None)
            await self._close(feed)

    async def _follow(self, feed: LiveFeed) -> None:
        kv = await self._nc.jetstream().key_value(subjects.LATEST_BUCKET)
        # The server drops an ephemeral consumer once nobody listens for this long (nats-py
        # would leave it 5 minutes): the consumer is gone seconds after the feed.
        watcher = await kv.watch(feed.key_filter, inactive_threshold=CONSUMER_IDLE_S)
        try:
            async for entry in watcher:
                if entry is None:
                    continue  # the end of the initial values
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    feed.latest.pop(entry.key, None)
                    continue
                feed.latest[entry.key] = entry.value
                for queue in list(feed.clients):
                    if not _offer(queue, entry.value):
                        feed.clients.discard(queue)  # too slow: it gets None and leaves
        finally:
            with contextlib.suppress(NatsError, TimeoutError):
                await watcher.stop()  # type: ignore[no-untyped-call]


def _offer(queue: asyncio.Queue[bytes | None], value: bytes | None) -> bool:
    try:
        queue.put_nowait(value)
        return True
    except asyncio.QueueFull:
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
        queue.put_nowait(None)
        return False

"""The uplink: publishes buffered batches to JetStream and deletes them after the PubAck.

Only a PubAck counts as delivered: bytes written to a socket that then dies are lost, and
a retry carries the same `Nats-Msg-Id`, which JetStream deduplicates.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError

from edge.buffer import SqliteBuffer, StoredBatch, StoredDeadLetter
from gateway import envelope, subjects
from gateway.config import AgentConfig

log = logging.getLogger(__name__)

DEAD_LETTER_CONTENT_TYPE = "application/octet-stream"


@dataclass(slots=True)
class UplinkStats:
    batches_published: int = 0
    readings_published: int = 0
    dead_letters_published: int = 0
    duplicate_acks: int = 0
    publish_errors: int = 0


class Backoff:
    """Exponential, capped, randomised (full jitter) retry delay."""

    def __init__(self, first: float = 0.1, cap: float = 10.0) -> None:
        self.first, self.cap, self._n = first, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self._n)
        self._n += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._n = 0


async def connect(url: str, name: str, timeout: float) -> NatsClient:
    """Connect, retrying forever with backoff: the agent starts and buffers without cloud."""
    backoff = Backoff(0.2, 10.0)
    while True:
        try:
            return await nats.connect(
                url,
                name=name,
                connect_timeout=timeout,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
            )
        except (OSError, NatsError, TimeoutError) as exc:
            delay = backoff.next()
            log.warning("cannot reach NATS at %s (%s); retrying in %.1fs", url, exc, delay)
            await asyncio.sleep(delay)


class Uplink:
    def __init__(self, config: AgentConfig, buffer: SqliteBuffer, wake: asyncio.Event) -> None:
        self.config = config
        self.buffer = buffer
        self.wake = wake
        self.stats = UplinkStats()
        self.subject = subjects.telemetry(config.site, config.agent)
        self.dlq_subject = subjects.dlq(config.site, config.agent)
        self.source = envelope.agent_source(config.site, config.agent)

    async def run(self, nc: NatsClient) -> None:
        """Forward the buffer forever; returns only by cancellation."""
        js = nc.jetstream()
        backoff = Backoff()
        while True:
            try:
                sent = await self._forward_round(js)
            except (NatsError, JetStreamError, TimeoutError) as exc:
                self.stats.publish_errors += 1
                delay = backoff.next()
                log.warning(
                    "publish failed (%s: %s); retrying in %.2fs", type(exc).__name__, exc, delay
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if not sent:
                self.wake.clear()
                await self._wait_for_work()

    async def _wait_for_work(self) -> None:
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=1.0)
        except TimeoutError:
            pass

    async def _forward_round(self, js: JetStreamContext) -> int:
        limit = self.config.uplink.max_batches_per_round
        letters = self.buffer.oldest_dead_letters(limit)
        for letter in letters:
            await self._publish_dead_letter(js, letter)
        batches = self.buffer.oldest_batches(limit)
        for batch in batches:
            await self._publish_batch(js, batch)
        return len(letters) + len(batches)

    async def _publish_batch(self, js: JetStreamContext, batch: StoredBatch) -> None:
        hdrs = envelope.headers(
            event_id=batch.batch_id,
            source=self.source,
            event_type=envelope.BATCH_TYPE,
            content_type=batch.content_type,
            time_ns=batch.created_ns,
        )
        ack = await js.publish(
            self.subject, batch.payload, headers=hdrs, timeout=self.config.uplink.publish_timeout_s
        )
        self.buffer.delete_batches([batch.row])
        self.stats.batches_published += 1
        self.stats.readings_published += batch.readings
        if ack.duplicate:
            self.stats.duplicate_acks += 1

    async def _publish_dead_letter(self, js: JetStreamContext, stored: StoredDeadLetter) -> None:
        event_id = f"{self.config.agent}:{self.buffer.instance}:dl:{stored.row}"
        hdrs = envelope.headers(
            event_id=event_id,
            source=self.source,
            event_type=envelope.DEAD_LETTER_TYPE,
            content_type=DEAD_LETTER_CONTENT_TYPE,
            time_ns=stored.created_ns,
        )
        hdrs["Gateway-Dead-Letter-Reason"] = stored.letter.reason
        hdrs["Gateway-Dead-Letter-Source"] = stored.letter.source
        hdrs["Gateway-Dead-Letter-Detail"] = stored.letter.detail[:200].replace("\n", " ")
        await js.publish(
            self.dlq_subject,
            stored.letter.payload,
            headers=hdrs,
            timeout=self.config.uplink.publish_timeout_s,
        )
        self.buffer.delete_dead_letters([stored.row])
        self.stats.dead_letters_published += 1

"""Retrying with backoff, and NATS connections that wait for the network to come up."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from gateway.config import NatsSettings
from gateway.connect import DEFAULT_INBOX, connect

log = logging.getLogger(__name__)


class Backoff:
    """Exponential, capped, randomised retry delay: equal jitter, a delay drawn uniformly
    from the upper half of `min(cap, first * 2**n)`, so it never falls below half of it."""

    def __init__(self, first: float = 0.1, cap: float = 10.0) -> None:
        self.first, self.cap, self._n = first, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self._n)
        self._n += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._n = 0


async def connect_forever(
    settings: NatsSettings, name: str, inbox_prefix: str = DEFAULT_INBOX
) -> NatsClient:
    """Connect (gateway.connect: TLS + credentials), retrying forever with backoff: an
    edge device boots long before its network is up, and the agent buffers meanwhile."""
    backoff = Backoff(0.2, 10.0)
    while True:
        try:
            return await connect(settings, name, inbox_prefix=inbox_prefix)
        except (OSError, NatsError, TimeoutError, ssl.SSLError) as exc:
            delay = backoff.next()
            log.warning("cannot reach NATS at %s (%s); retrying in %.1fs", settings.url, exc, delay)
            await asyncio.sleep(delay)

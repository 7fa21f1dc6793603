"""Retrying with backoff, and NATS connections that wait for the network to come up."""

from __future__ import annotations

import asyncio
import logging
import random

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

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
    url: str, name: str, timeout: float = 5.0, creds: str | None = None
) -> NatsClient:
    """Connect, retrying forever with backoff: an edge device boots long before its
    network is up, and the agent buffers meanwhile. `url` may list several servers (a
    cluster), comma-separated; `creds` is a NATS credentials file."""
    backoff = Backoff(0.2, 10.0)
    while True:
        try:
            return await nats.connect(
                url.split(","),
                name=name,
                user_credentials=creds,
                connect_timeout=timeout,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
            )
        except (OSError, NatsError, TimeoutError) as exc:
            delay = backoff.next()
            log.warning("cannot reach NATS at %s (%s); retrying in %.1fs", url, exc, delay)
            await asyncio.sleep(delay)

"""Retrying with backoff, and NATS connections that wait for the network to come up."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from gateway.config import NatsSettings
from gateway.connect import DEFAULT_INBOX, ErrorCallback, connect

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
    settings: NatsSettings,
    name: str,
    inbox_prefix: str = DEFAULT_INBOX,
    *,
    error_cb: ErrorCallback | None = None,
    on_failure: Callable[[BaseException], None] | None = None,
) -> NatsClient:
    """Connect (gateway.connect: TLS + credentials), retrying forever with backoff: an
    edge device boots long before its network is up, and the agent buffers meanwhile.
    The first failure is logged as a warning, the retries after it only at debug level;
    `on_failure` hears of each (the agent's health says why it is not connected)."""
    backoff = Backoff(0.2, 10.0)
    level = logging.WARNING
    while True:
        try:
            return await connect(settings, name, inbox_prefix=inbox_prefix, error_cb=error_cb)
        except (OSError, NatsError, TimeoutError, ssl.SSLError) as exc:
            delay = backoff.next()
            url = settings.url
            log.log(level, "cannot reach NATS at %s (%s); retrying in %.1fs", url, exc, delay)
            level = logging.DEBUG
            if on_failure is not None:
                on_failure(exc)
            await asyncio.sleep(delay)

"""PubAcks of pipelined JetStream publishes, taken on one subscription of our own.

nats-py's `publish_async` costs about 26 us of CPU per message here (a NUID and a random
token, a future with a done callback, a semaphore) against about 12 us for a plain
publish whose reply subject is one of ours, one wildcard subscription taking every PubAck
(measured side by side with 3,000 AGG-sized records). The worker publishes a record per
window, series and width, so this is most of its publishing cost; the few publishes that
must not fail alone (a retry, a dead letter) still go through `JetStreamContext.publish`.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError


def acknowledged(msg: Msg) -> bool:
    """True for a PubAck that names its stream and no error (a duplicate counts: the
    message is in the stream); False for an error, a status (no responders) or garbage."""
    if msg.headers and msg.headers.get("Status"):
        return False
    try:
        ack = orjson.loads(msg.data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(ack, dict) and "stream" in ack and "error" not in ack


class PubAcks:
    """Publishes with a reply subject of ours; `wait` tells which were acknowledged."""

    def __init__(self) -> None:
        self._nc: NatsClient | None = None
        self._sub: Subscription | None = None
        self._prefix = ""
        self._next = 0
        self._pending: set[str] = set()  # published, not yet collected by `wait`
        self._results: dict[str, bool] = {}  # of pending ones: acknowledged?
        self._missing: set[str] = set()  # what the current `wait` still waits for
        self._arrived = asyncio.Event()

    async def start(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._sub = await nc.subscribe(self._prefix + "*", cb=self._on_reply)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(NatsError, TimeoutError):
                await sub.unsubscribe()

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> str:
        """Publish; the reply subject that identifies it to `wait`. NatsError if not sent."""
        assert self._nc is not None, "start() first"
        reply = f"{self._prefix}{self._next}"
        self._next += 1
        self._pending.add(reply)  # first: a publish that flushes may see its PubAck come
        try:
            await self._nc.publish(subject, data, reply=reply, headers=headers)
        except BaseException:
            self._pending.discard(reply)
            raise
        return reply

    async def wait(self, replies: list[str], timeout: float) -> set[str]:
        """Wait up to `timeout` for the PubAcks of `replies`; those acknowledged. Every one
        is forgotten on return (a PubAck that comes later is ignored)."""
        self._missing = {r for r in replies if r not in self._results}
        if self._missing:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        self._missing = set()
        ok = {r for r in replies if self._results.pop(r, False)}
        self._pending.difference_update(replies)
        return ok

    async def _on_reply(self, msg: Msg) -> None:
        if msg.subject not in self._pending:
            return  # collected already (timed out), or not ours
        self._results[msg.subject] = acknowledged(msg)
        if self._missing:
            self._missing.discard(msg.subject)
            if not self._missing:
                self._arrived.set()

"""Sources: where raw payloads enter the agent.

A source hands `SourceMessage`s to the agent's `deliver` callback, on the event loop. Each
carries an `ack` callable that the agent calls only once the message's readings (or its
dead letter) are durable, in the order the messages arrived; sources that cannot
acknowledge (serial) leave it None.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SourceMessage:
    source: str
    topic: str  # MQTT topic, or the serial port
    payload: bytes
    ack: Callable[[], None] | None = None
    received_ns: int = field(default_factory=time.time_ns)  # wall clock, for event times
    problem: str = ""  # set by the source for bytes it knows are bad: a dead-letter reason
    # For redelivery recognition (edge/dedupe.py): the MQTT packet identifier (0: none,
    # as for QoS 0 and serial) and the DUP flag. `session_reset`: no payload; the broker
    # said (CONNACK) it holds no session for us, so nothing before can be resent.
    packet_id: int = 0
    dup: bool = False
    session_reset: bool = False
    connection: int = 0  # which of the source's connections it came by (one per CONNACK)
    # Publish (topic, payload) on the connection this message came by (MQTT only): how a
    # decoder answers a device, as Sparkplug B's rebirth request does.
    reply: Callable[[str, bytes], None] | None = None


Deliver = Callable[[SourceMessage], None]


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """Whether a source delivers right now (`/healthz`, edge/health.py), and why not."""

    up: bool
    detail: str = ""  # why not ("cannot connect to ..."); "" while a first connect is under way
    dead: bool = False  # its task ended: it will not come back by itself


def task_status(task: asyncio.Task[None] | None) -> SourceStatus | None:
    """A dead status if the source's own task has ended (it never should), else None."""
    if task is None or not task.done():
        return None
    if task.cancelled():
        return SourceStatus(False, "its task was cancelled", dead=True)
    exc = task.exception()  # retrieved here, so asyncio does not log it again at exit
    return SourceStatus(False, f"its task ended: {type(exc).__name__}: {exc}", dead=True)


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Stop a source's own task and wait until it has finished unwinding."""
    if task is not None and not task.done():  # a dead one has said why: `task_status`
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Source(Protocol):
    name: str
    ready: asyncio.Event  # set once the source is listening (subscribed, or port watched)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> SourceStatus: ...

"""Sources: where raw payloads enter the agent.

A source puts `SourceMessage`s on the agent's queue. Each carries an `ack` callable that
the agent calls only once the message's readings (or its dead letter) are durable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SourceMessage:
    source: str
    topic: str
    payload: bytes
    ack: Callable[[], None] | None = None


class Source(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

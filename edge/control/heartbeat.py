"""The agent's actual state in FLEET_AGENTS, written at every heartbeat."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from edge.buffer import BufferStats
from gateway.records import AGENTS_BUCKET, AgentState, device_key


@dataclass(frozen=True, slots=True)
class IntakeCounts:
    messages: int
    readings: int
    duplicates_dropped: int
    dead_letters: dict[str, int]  # by reason
    filtered: dict[str, int]  # by filter
    device_events: dict[str, int] = field(default_factory=dict)  # Sparkplug B births, deaths


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """The agent's status at one moment: the heartbeat on status.<site>.<agent>, /healthz,
    and (condensed by `agent_state`) its record in FLEET_AGENTS. Fields serialise in this
    order (`to_json`); see docs/operations.md."""

    site: str
    agent: str
    version: str
    bundle: str  # the installed bundle's version, "" when not run from a bundle
    pid: int
    config_revision: int
    last_error: str
    ready: bool
    problems: list[str]  # why not ready (edge/health.py); empty when ready
    time_ns: int
    intake: IntakeCounts
    buffer: BufferStats
    uplink: dict[str, Any]  # `Uplink.metrics`
    blocked: bool  # overflow policy `block`: a flush is held until the uplink drains
    accounting: dict[str, Any]  # `edge.accounting.report`

    def to_json(self) -> bytes:
        return orjson.dumps(self)


def agent_state(snap: AgentSnapshot) -> AgentState:
    oldest = snap.buffer.oldest_created_ns
    return AgentState(
        site=snap.site,
        agent=snap.agent,
        version=snap.bundle or snap.version,
        pid=snap.pid,
        ready=snap.ready,
        config_revision=snap.config_revision,
        buffer_readings=snap.buffer.readings,
        buffer_batches=snap.buffer.batches,
        oldest_age_s=None if oldest is None else round((time.time_ns() - oldest) / 1e9, 3),
        dead_letters=sum(snap.intake.dead_letters.values()),
        last_error=snap.last_error,
        time_ns=snap.time_ns,
    )


class ActualState:
    def __init__(self, site: str, agent: str) -> None:
        self.key = device_key(site, agent)
        self._kv: KeyValue | None = None

    async def report(self, nc: NatsClient, snap: AgentSnapshot) -> None:
        """Put the record; without the bucket (`gateway deploy init` not run) do nothing."""
        if self._kv is None:
            try:
                self._kv = await nc.jetstream().key_value(AGENTS_BUCKET)
            except BucketNotFoundError:
                return
        await self._kv.put(self.key, agent_state(snap).encode())

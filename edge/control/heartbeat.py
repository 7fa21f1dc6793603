"""The agent's actual state in FLEET_AGENTS, written at every heartbeat."""

from __future__ import annotations

import time
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from gateway.records import AGENTS_BUCKET, AgentState, device_key


def agent_state(snap: dict[str, Any]) -> AgentState:
    buf = snap["buffer"]
    oldest = buf.get("oldest_created_ns")
    return AgentState(
        site=snap["site"],
        agent=snap["agent"],
        version=snap.get("bundle") or snap["version"],
        pid=snap["pid"],
        ready=snap["ready"],
        config_revision=snap["config_revision"],
        buffer_readings=buf["readings"],
        buffer_batches=buf["batches"],
        oldest_age_s=None if oldest is None else round((time.time_ns() - oldest) / 1e9, 3),
        dead_letters=sum(snap["intake"]["dead_letters"].values()),
        last_error=snap["last_error"],
        time_ns=snap["time_ns"],
    )


class ActualState:
    def __init__(self, site: str, agent: str) -> None:
        self.key = device_key(site, agent)
        self._kv: KeyValue | None = None

    async def report(self, nc: NatsClient, snap: dict[str, Any]) -> None:
        """Put the record; without the bucket (`gateway deploy init` not run) do nothing."""
        if self._kv is None:
            try:
                self._kv = await nc.jetstream().key_value(AGENTS_BUCKET)
            except BucketNotFoundError:
                return
        await self._kv.put(self.key, agent_state(snap).encode())

"""The agents' heartbeats (`status.<site>.<agent>`), kept for the dashboard's fleet pages.

The heartbeat is the agent's full snapshot (`edge/control/heartbeat.py` writes it; its
fields are documented in docs/operations.md); FLEET_AGENTS holds a condensed copy of it,
which is read too so agents heard from before this server started are listed. Two beats of
each agent are kept: the rate of readings in is the difference of their counts.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from gateway import records
from gateway.errors import GatewayError
from gateway.kv_read import read_all

OFFLINE_AFTER_S = 10.0  # as `gateway fleet status`


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat as received: its time and the fields the fleet table shows."""

    site: str
    agent: str
    time_ns: int
    readings: int  # intake readings since the agent started
    snapshot: bytes  # the heartbeat as sent, for the agent's page

    @classmethod
    def parse(cls, data: bytes) -> Beat | None:
        """None for a message that is not a heartbeat (it is ignored, not fatal)."""
        try:
            doc = orjson.loads(data)
            return cls(
                str(doc["site"]),
                str(doc["agent"]),
                int(doc["time_ns"]),
                int(doc["intake"]["readings"]),
                data,
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class FleetAgent:
    """One row of the fleet page."""

    site: str
    agent: str
    online: bool
    heartbeat_age_s: float | None
    version: str
    version_desired: str
    config_revision: int
    buffer_readings: int
    oldest_age_s: float | None
    drain_eta_s: float | None
    readings_per_s: float | None
    dead_letters: int
    last_error: str


class Heartbeats:
    """The latest two heartbeats per agent; `start` subscribes, `stop` unsubscribes."""

    def __init__(self) -> None:
        self._beats: dict[tuple[str, str], tuple[Beat | None, Beat]] = {}
        self._sub: Subscription | None = None
        self.ignored = 0  # messages on status.* that were not heartbeats

    async def start(self, nc: NatsClient) -> None:
        self._sub = await nc.subscribe("status.*.*", cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        beat = Beat.parse(msg.data)
        if beat is None:
            self.ignored += 1
            return
        key = (beat.site, beat.agent)
        prev = self._beats.get(key)
        self._beats[key] = (prev[1] if prev else None, beat)

    def latest(self, site: str, agent: str) -> Beat | None:
        pair = self._beats.get((site, agent))
        return pair[1] if pair else None

    def rate(self, site: str, agent: str) -> float | None:
        pair = self._beats.get((site, agent))
        old, new = pair if pair else (None, None)
        if old is None or new is None or new.time_ns <= old.time_ns:
            return None
        return round((new.readings - old.readings) / ((new.time_ns - old.time_ns) / 1e9), 2)

    async def fleet(self, nc: NatsClient) -> list[FleetAgent]:
        """Every agent heard from (heartbeat or FLEET_AGENTS), sorted by site and agent."""
        stored = await _read_bucket(nc, records.AGENTS_BUCKET)
        desired = await _read_bucket(nc, records.DESIRED_BUCKET)
        keys = {records.device_key(s, a) for s, a in self._beats} | set(stored)
        return [self._row(key, stored, desired) for key in sorted(keys)]

    def _row(self, key: str, stored: dict[str, bytes], desired: dict[str, bytes]) -> FleetAgent:
        site, agent = records.split_key(key)
        beat = self.latest(site, agent)
        doc: dict[str, Any] = _doc(beat.snapshot) if beat else {}
        state = _doc(stored.get(key, b"{}"))
        time_ns = max(int(doc.get("time_ns", 0)), int(state.get("time_ns", 0)))
        age = (time.time_ns() - time_ns) / 1e9 if time_ns else None
        buffer = doc.get("buffer", {})
        return FleetAgent(
            site=site,
            agent=agent,
            online=age is not None and age < OFFLINE_AFTER_S,
            heartbeat_age_s=None if age is None else round(age, 1),
            version=str(doc.get("bundle") or doc.get("version") or state.get("version", "")),
            version_desired=str(_doc(desired.get(key, b"{}")).get("version", "")),
            config_revision=int(doc.get("config_revision", state.get("config_revision", 0))),
            buffer_readings=int(buffer.get("readings", state.get("buffer_readings", 0))),
            oldest_age_s=_oldest(buffer, state),
            drain_eta_s=doc.get("uplink", {}).get("drain_eta_s"),
            readings_per_s=self.rate(site, agent),
            dead_letters=int(state.get("dead_letters", 0))
            or sum(doc.get("intake", {}).get("dead_letters", {}).values()),
            last_error=str(doc.get("last_error", state.get("last_error", ""))),
        )


def _oldest(buffer: dict[str, Any], state: dict[str, Any]) -> float | None:
    created = buffer.get("oldest_created_ns")
    if created:
        return round((time.time_ns() - int(created)) / 1e9, 1)
    value = state.get("oldest_age_s")
    return None if value is None else float(value)


def _doc(data: bytes) -> dict[str, Any]:
    try:
        return records.decode_any(data)
    except (GatewayError, ValueError):
        return {}


async def _read_bucket(nc: NatsClient, bucket: str) -> dict[str, bytes]:
    """Every key's value; {} when the bucket does not exist (`gateway deploy init` not run)."""
    try:
        values = await read_all(nc.jetstream(), bucket)
    except NotFoundError:
        return {}
    return {key: value for key, value in values.items() if value}

"""The aggregator: a durable pull consumer on TELEMETRY computing tumbling windows.

Windows close on event time, tracked per agent (each agent's stream of batches is
roughly in event-time order, even while it drains a backlog): a window closes when the
agent's newest reading is `lateness` past its end, or when the agent has been idle for
`idle_close_s`. A TELEMETRY message is acknowledged only once every window it touched is
closed and published, so after a crash the open windows are rebuilt from the
redelivered messages. Results go to `agg.<window>.<site>.<device>.<metric>` with the
stable id `<subject>@<window start>`, and the latest state of each series to a KV bucket
for the live views.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from cloud.streams import ensure_streams
from cloud.windows import WindowKey, WindowState, merge_into, partials
from gateway import codec, subjects
from gateway.config import CloudConfig
from gateway.errors import CodecError

log = logging.getLogger(__name__)
DURABLE = "aggregator"


def window_label(width_s: int) -> str:
    return f"{width_s // 60}m" if width_s % 60 == 0 else f"{width_s}s"


def window_record(
    key: WindowKey, st: WindowState, label: str, width_ns: int, closed: bool
) -> dict[str, Any]:
    return {
        "site": key.site,
        "device": key.device,
        "metric": key.metric,
        "unit": st.unit,
        "window": label,
        "start_ns": key.start_ns,
        "end_ns": key.start_ns + width_ns,
        "count": st.count,
        "min": st.min,
        "max": st.max,
        "mean": st.mean,
        "sum": st.sum,
        "last": st.last,
        "closed": closed,
    }


@dataclass(slots=True)
class _AgentState:
    watermark_ns: int = 0
    last_seen: float = 0.0  # monotonic
    windows: dict[WindowKey, WindowState] = field(default_factory=dict)
    unacked: list[tuple[Msg, int]] = field(default_factory=list)  # (msg, latest window end)


@dataclass(slots=True)
class AggregatorStats:
    messages: int = 0
    readings: int = 0
    windows_published: int = 0
    late_readings: int = 0
    bad_messages: int = 0


class Aggregator:
    def __init__(self, config: CloudConfig) -> None:
        self.config = config
        s = config.aggregator
        self.width_ns = s.window_s * 1_000_000_000
        self.lateness_ns = int(s.lateness_s * 1e9)
        self.label = window_label(s.window_s)
        self.stats = AggregatorStats()
        self._agents: dict[str, _AgentState] = {}
        self._closed_until: dict[WindowKey, int] = {}
        self._dirty: set[WindowKey] = set()
        self._closed_records: list[tuple[WindowKey, dict[str, Any]]] = []

    async def run(self, nc: NatsClient, stop: asyncio.Event) -> None:
        js = nc.jetstream()
        await ensure_streams(js, self.config.streams)
        kv = await js.key_value(subjects.LATEST_BUCKET)
        sub = await js.pull_subscribe(
            "telemetry.>",
            durable=DURABLE,
            stream=subjects.TELEMETRY_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=max(
                    60.0,
                    4
                    * (
                        self.config.aggregator.window_s
                        + self.config.aggregator.lateness_s
                        + self.config.aggregator.idle_close_s
                    ),
                ),
                max_ack_pending=100_000,
            ),
        )
        next_live = 0.0
        while not stop.is_set():
            try:
                msgs = await sub.fetch(self.config.aggregator.fetch_batch, timeout=0.5)
            except TimeoutError:
                msgs = []
            except NatsError as exc:
                log.warning("fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await self._ingest(msg)
            await self._close_due(js)
            if time.monotonic() >= next_live:
                await self._publish_live(kv)
                next_live = time.monotonic() + self.config.aggregator.live_update_s

    async def _ingest(self, msg: Msg) -> None:
        self.stats.messages += 1
        try:
            batch = codec.decode(msg.data)
        except CodecError as exc:
            self.stats.bad_messages += 1
            log.error("TELEMETRY message %s is not a batch: %s", msg.metadata.sequence, exc)
            await msg.term()
            return
        agent = self._agents.setdefault(msg.subject, _AgentState())
        agent.last_seen = time.monotonic()
        if len(batch) == 0:
            await msg.ack()
            return
        self.stats.readings += len(batch)
        parts = partials(batch, self.width_ns)
        fresh = {
            k: v
            for k, v in parts.items()
            if k.start_ns >= self._closed_until.get(WindowKey(k.site, k.device, k.metric, 0), -1)
        }
        self.stats.late_readings += sum(v.count for k, v in parts.items() if k not in fresh)
        merge_into(agent.windows, fresh)
        self._dirty.update(fresh)
        agent.watermark_ns = max(agent.watermark_ns, int(batch.time_ns.max()))
        latest_end = max(k.start_ns for k in parts) + self.width_ns
        agent.unacked.append((msg, latest_end))

    async def _close_due(self, js: JetStreamContext) -> None:
        idle_s = self.config.aggregator.idle_close_s
        now = time.monotonic()
        for agent in self._agents.values():
            idle = now - agent.last_seen >= idle_s
            horizon = agent.watermark_ns - self.lateness_ns
            due = [k for k in agent.windows if idle or k.start_ns + self.width_ns <= horizon]
            for key in sorted(due, key=lambda k: k.start_ns):
                await self._publish_window(js, key, agent.windows[key])
                del agent.windows[key]
                series = WindowKey(key.site, key.device, key.metric, 0)
                self._closed_until[series] = max(
                    self._closed_until.get(series, -1), key.start_ns + self.width_ns
                )
            open_ends = [k.start_ns + self.width_ns for k in agent.windows]
            oldest_open = min(open_ends) if open_ends else None
            keep = []
            for msg, end in agent.unacked:
                if oldest_open is None or end < oldest_open:
                    await msg.ack()
                else:
                    keep.append((msg, end))
            agent.unacked = keep

    async def _publish_window(self, js: JetStreamContext, key: WindowKey, st: WindowState) -> None:
        subject = subjects.agg(self.label, key.site, key.device, key.metric)
        record = window_record(key, st, self.label, self.width_ns, closed=True)
        await js.publish(
            subject, orjson.dumps(record), headers={"Nats-Msg-Id": f"{subject}@{key.start_ns}"}
        )
        self.stats.windows_published += 1
        self._dirty.discard(key)
        self._closed_records.append((key, record))

    async def _publish_live(self, kv: KeyValue) -> None:
        updates: dict[str, dict[str, Any]] = {}
        for key, record in self._closed_records:
            updates[f"{self.label}.{key.site}.{key.device}.{key.metric}"] = record
        self._closed_records.clear()
        for agent in self._agents.values():
            for key in self._dirty & agent.windows.keys():
                updates[f"{self.label}.{key.site}.{key.device}.{key.metric}"] = window_record(
                    key, agent.windows[key], self.label, self.width_ns, closed=False
                )
        self._dirty.clear()
        for k, rec in updates.items():
            with contextlib.suppress(NatsError, TimeoutError):
                await kv.put(k, orjson.dumps(rec))

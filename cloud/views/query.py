"""History from the AGG stream: the window results of some series over a time range.

The server filters by subject (`agg.<window>.<site>.<device>.<metric>`, `*` for any), we
filter by window start. A window may have been published more than once (re-emitted with
late readings, or again after a restart): the last record of each window wins, and it is
the complete one (see `cloud/aggregator.py`).
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from cloud.errors import QueryError
from cloud.records import WindowId, WindowRecord
from gateway import subjects
from gateway.errors import ConfigError

CSV_FIELDS = (
    "window",
    "site",
    "device",
    "metric",
    "unit",
    "start_ns",
    "end_ns",
    "count",
    "min",
    "max",
    "sum",
    "mean",
    "stddev",
    "p50",
    "p95",
    "first",
    "last",
    "closed",
)


@dataclass(frozen=True, slots=True)
class Selector:
    """Which series and windows; None means any."""

    site: str | None = None
    device: str | None = None
    metric: str | None = None
    window: str | None = None
    start_ns: int | None = None  # windows starting at or after
    end_ns: int | None = None  # windows starting before

    def subject(self) -> str:
        return subjects.agg_filter(self.kv_key())

    def kv_key(self) -> str:
        """The same selection as a key filter of the AGG_LATEST bucket."""
        return subjects.latest_filter(
            window=self.window, site=self.site, device=self.device, metric=self.metric
        )

    def matches(self, record: WindowRecord) -> bool:
        for field in ("site", "device", "metric", "window"):
            want = getattr(self, field)
            if want is not None and getattr(record, field) != want:
                return False
        start = record.start_ns
        if self.start_ns is not None and start < self.start_ns:
            return False
        return self.end_ns is None or start < self.end_ns


async def query(js: JetStreamContext, sel: Selector, batch: int = 1000) -> list[WindowRecord]:
    """The latest record of every selected window, ordered by series and start.

    Raises `QueryError` when JetStream cannot serve it (e.g. no leader during a failover)."""
    try:
        return await _query(js, sel, batch)
    except (NatsError, TimeoutError) as exc:
        raise QueryError(str(exc) or type(exc).__name__) from exc


async def _query(js: JetStreamContext, sel: Selector, batch: int) -> list[WindowRecord]:
    sub = await js.pull_subscribe(
        sel.subject(),
        stream=subjects.AGG_STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        ),
    )
    latest: dict[WindowId, WindowRecord] = {}
    info = await sub.consumer_info()
    try:
        remaining = int(info.num_pending or 0)
        while remaining > 0:
            msgs = await sub.fetch(min(batch, remaining), timeout=5.0)
            remaining -= len(msgs)
            for msg in msgs:
                record = WindowRecord.from_json(msg.data)
                if sel.matches(record):
                    latest[record.window_id] = record
    finally:
        with contextlib.suppress(NatsError, TimeoutError):
            await sub.unsubscribe()
            await js.delete_consumer(subjects.AGG_STREAM, info.name)  # do not wait for expiry
    return [latest[k] for k in sorted(latest, key=lambda k: (k[1], k[2], k[3], k[0], k[4]))]


def to_csv(records: Sequence[WindowRecord]) -> str:
    """Floats as `repr`, which reads back as the same float."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for r in records:
        values = (getattr(r, k) for k in CSV_FIELDS)
        writer.writerow(repr(v) if isinstance(v, float) else v for v in values)
    return out.getvalue()


def to_json(records: Sequence[WindowRecord]) -> str:
    return orjson.dumps(list(records)).decode()


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch from an integer or an ISO 8601 time (UTC if no zone)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"time {text!r}: expected ISO 8601 or ns since the epoch") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000

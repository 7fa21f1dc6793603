"""The batch recomputation the cloud tests compare with: plain numpy, one window at a time.

Deliberately simple and independent of `cloud.windows`: readings are grouped in a dict and
each window's statistics come from `np.min`, `np.percentile`, `np.std`, `sorted`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from cloud.records import WindowId, WindowRecord
from gateway import codec, subjects

UNITS = ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))  # window labels: 10s, 1m, 1h, 1d
Row = tuple[str, str, str, str, float, int, int]  # site, device, metric, unit, value, t, seq


def rows_of(batches: Iterable[codec.Batch]) -> list[Row]:
    return [
        (r.site, r.device, r.metric, r.unit, r.value, r.time_ns, r.seq)
        for b in batches
        for r in b.readings()
    ]


def with_copies(
    batches: list[tuple[str, str, codec.Batch]], rng: np.random.Generator, share: float = 0.3
) -> list[tuple[str, str, codec.Batch]]:
    """The batches, some published again soon after under another `Nats-Msg-Id`: the
    same content, a duplicate JetStream's dedupe window cannot catch."""
    out: list[tuple[str, str, codec.Batch]] = []
    for subject, msg_id, batch in batches:
        out.append((subject, msg_id, batch))
        if rng.random() < share:
            out.append((subject, f"{msg_id}-again", batch))
    return out


def distinct(batches: Iterable[codec.Batch]) -> list[Row]:
    """The readings of these messages (in stream order) counted once each, by the identity
    docs/operations.md states: (series, time, seq) if numbered; (series, time, value, rank
    among the identical ones in the same message) if not."""
    seen: set[tuple[object, ...]] = set()
    out: list[Row] = []
    for batch in batches:
        rank: dict[tuple[object, ...], int] = {}
        for row in rows_of([batch]):
            site, device, metric, _, value, t, seq = row
            base = (site, device, metric, t, seq if seq >= 0 else value, seq < 0)
            rank[base] = rank.get(base, -1) + 1
            key = (*base, rank[base] if seq < 0 else 0)
            if key not in seen:
                seen.add(key)
                out.append(row)
    return out


def recompute(rows: Iterable[Row], widths_s: Iterable[int]) -> dict[WindowId, dict[str, Any]]:
    groups: dict[WindowId, list[tuple[int, int, float, str]]] = {}
    widths = list(widths_s)
    for site, device, metric, unit, value, t, seq in rows:
        for w in widths:
            width_ns = w * 10**9
            label = next(f"{w // n}{u}" for n, u in UNITS if w % n == 0)
            key = (label, site, device, metric, t - t % width_ns)
            groups.setdefault(key, []).append((t, seq, value, unit))
    out: dict[WindowId, dict[str, Any]] = {}
    for key, items in groups.items():
        v = np.array([x[2] for x in items])
        ordered = sorted(items)  # by (time, seq, value): ties on (time, seq) -> smallest value
        latest = max(items, key=lambda x: (x[0], x[1], -x[2]))
        out[key] = {
            "count": len(items),
            "min": float(np.min(v)),
            "max": float(np.max(v)),
            "mean": float(np.mean(v)),
            "stddev": float(np.std(v)),
            "p50": float(np.percentile(v, 50)),
            "p95": float(np.percentile(v, 95)),
            "first": ordered[0][2],
            "last": latest[2],
            "unit": items[0][3],
        }
    return out


Got = WindowRecord | dict[str, Any]  # a dict: statistics computed without a record


def value_of(got: Got, field: str) -> Any:
    return got[field] if isinstance(got, dict) else getattr(got, field)


def assert_windows_equal(got: Mapping[WindowId, Got], want: dict[WindowId, dict[str, Any]]) -> None:
    """Every window present on both sides, counts/min/max/percentiles/first/last exact."""
    missing = sorted(set(want) - set(got))[:5]
    extra = sorted(set(got) - set(want))[:5]
    assert not missing and not extra, f"missing {missing} extra {extra}"
    for key, w in want.items():
        g = got[key]
        for field in ("count", "min", "max", "p50", "p95", "first", "last", "unit"):
            v = value_of(g, field)
            assert v == w[field], f"{key} {field}: got {v!r} want {w[field]!r}"
        for field in ("mean", "stddev"):
            v = value_of(g, field)
            assert abs(v - w[field]) <= 1e-9 * max(1.0, abs(w[field])), (key, field)


def make_batches(
    rng: np.random.Generator,
    *,
    agents: int = 2,
    devices: int = 3,
    metrics: tuple[str, ...] = ("temp", "hum"),
    seconds: int = 120,
    rate_hz: float = 2.0,
    batch_size: int = 50,
    t0: int = 1_700_000_000 * 10**9,
    site: str = "s1",
    unnumbered: float = 0.0,
) -> list[tuple[str, str, codec.Batch]]:
    """Per agent, readings in event-time order cut into batches: (subject, msg id, batch).

    A fraction `unnumbered` of the readings carry seq -1 (devices that do not number)."""
    out = []
    step = int(1e9 / rate_hz)
    for a in range(agents):
        agent = f"a{a}"
        readings = []
        seq = 0
        for i in range(int(seconds * rate_hz)):
            for d in range(devices):
                for metric in metrics:
                    seq += 1
                    jitter = int(rng.integers(0, step // 2))
                    value = float(np.round(rng.normal(20, 4), 3))
                    n = -1 if unnumbered and rng.random() < unnumbered else seq
                    readings.append((f"{agent}-d{d}", metric, value, t0 + i * step + jitter, n))
        for n, lo in enumerate(range(0, len(readings), batch_size)):
            b = codec.ColumnBuilder(site, agent, f"{agent}-{n}")
            for device, metric, value, t, s in readings[lo : lo + batch_size]:
                b.add(device, metric, "u", value, t, s)
            out.append((f"telemetry.{site}.{agent}", f"{agent}-{n}", b.build()))
    return out


def windows_of(records: Iterable[WindowRecord]) -> dict[WindowId, WindowRecord]:
    return {r.window_id: r for r in records}


def windows_of_json(docs: Iterable[object]) -> dict[WindowId, WindowRecord]:
    """Window records as the CLI and the HTTP API give them, each read strictly."""
    return windows_of(WindowRecord.from_doc(d, strict=True) for d in docs)


async def stream_rows(js: JetStreamContext, timeout: float = 30) -> list[Row]:
    """Every reading stored in the TELEMETRY stream, decoded (the raw source of truth)."""
    return rows_of(await stream_batches(js, timeout))


async def stream_batches(js: JetStreamContext, timeout: float = 30) -> list[codec.Batch]:
    """Every message of the TELEMETRY stream, decoded, in stream order.

    Retried while JetStream is electing leaders (right after a node was killed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await _stream_batches(js)
        except (NatsError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _stream_batches(js: JetStreamContext) -> list[codec.Batch]:
    sub = await js.pull_subscribe(
        "telemetry.>",
        stream=subjects.TELEMETRY_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0),
    )
    batches = []
    try:
        remaining = int((await sub.consumer_info()).num_pending or 0)
        while remaining > 0:
            msgs = await sub.fetch(min(500, remaining), timeout=10)
            remaining -= len(msgs)
            batches += [codec.decode(m.data) for m in msgs]
    finally:
        await sub.unsubscribe()
    return batches

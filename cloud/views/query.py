"""History from the AGG stream: the window results of some series over a time range.

A query costs what it returns, not what AGG holds (docs/api.md, "How history is read"):

1. the server lists the series (AGG subjects) the selection covers, with their counts
   (`STREAM.INFO` with a subject filter); a selection naming one series and width knows
   its subject and skips this;
2. for each, a search of the stream by direct gets (`last_by_subj` and `next_by_subj`:
   interpolation between the series' first and last records, bisection when that does
   not converge) finds where its records of windows starting at or after `from` can
   begin, from the `IndexBounds` headers the aggregator puts on each record;
3. one consumer reads the selection from the earliest of those sequences and stops once
   every series' floor has passed `to` (or at the end of the stream).

A window may have been published more than once (re-emitted with late readings, or again
after a restart): the last record of each window wins, and it is the complete one (see
`cloud/aggregator.py`). Records without bounds (written before they existed) are never
skipped, so such a stream is read from its start, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RawStreamMsg
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cloud.errors import QueryError
from cloud.records import IndexBounds, WindowId, WindowRecord
from cloud.windows import label_seconds
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
    "summarised",
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


BISECT_CONCURRENCY = 32  # direct gets in flight while locating many series


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a query reads: from `start_seq`, the series in `subjects` (stream state)."""

    start_seq: int
    last_seq: int
    subjects: tuple[str, ...]
    gets: int  # direct gets the bisection made


async def query(js: JetStreamContext, sel: Selector, batch: int = 1000) -> list[WindowRecord]:
    """The latest record of every selected window, ordered by series and start.

    Raises `QueryError` when JetStream cannot serve it (e.g. no leader during a failover)."""
    try:
        plan = await locate(js, sel)
        return await read(js, sel, plan, batch)
    except (NatsError, TimeoutError) as exc:
        raise QueryError(str(exc) or type(exc).__name__) from exc


async def locate(js: JetStreamContext, sel: Selector) -> Plan:
    """For each selected series, the first sequence its answer can start at."""
    if sel.subject().count("*") == 0:
        return await _locate_one(js, sel)
    info = await js.stream_info(subjects.AGG_STREAM, subjects_filter=sel.subject())
    state = info.state
    names = tuple(sorted(state.subjects or {}))
    if not names or state.messages == 0:
        return Plan(state.last_seq + 1, state.last_seq, (), 0)
    if sel.start_ns is None:
        return Plan(state.first_seq, state.last_seq, names, 0)
    search = _Search(js, sel.start_ns, bool(info.config.allow_direct))
    gate = asyncio.Semaphore(BISECT_CONCURRENCY)

    async def one(subject: str) -> int:
        async with gate:
            return await search.start(subject)

    starts = await asyncio.gather(*(one(s) for s in names))
    return Plan(min(starts), state.last_seq, names, search.gets)


async def _locate_one(js: JetStreamContext, sel: Selector) -> Plan:
    """One series: its subject is known, so no `STREAM.INFO` (a request that costs more
    than the search); its first and last records are found by direct gets."""
    subject = sel.subject()
    search = _Search(js, sel.start_ns, direct=True)
    try:
        last = await search.last(subject)
    except NoRespondersError:  # a stream without direct gets (before `gateway cloud init`)
        search = _Search(js, sel.start_ns, direct=False)
        last = await search.last(subject)
    if last is None:
        return Plan(1, 0, (), search.gets)
    start = await search.start(subject, last)
    return Plan(start, last.seq, (subject,), search.gets)


@dataclass(frozen=True, slots=True)
class _Probe:
    """A record of the searched series: where it is and the watermark it carries."""

    seq: int
    high_ns: int | None  # None: no bounds, so it is never skipped


class _Search:
    """Where a series' records of windows starting at or after `from_ns` can begin.

    The answer is the smallest sequence such that every record of the series before it has
    a watermark before `from_ns` (`IndexBounds`: then it and all earlier ones start before
    it). Watermarks grow along the stream about as evenly as the stream does, so the first
    probe goes where a straight line between the series' first and last records puts the
    record just before `from_ns` (interpolation search: one probe, then one to check the
    next record, for an evenly written series). A probe that lands far from `from_ns` is
    followed by a bisection step, and after half of log2(interval) probes only bisection is
    used: at most about 1.5 x log2(stream length) direct gets (docs/api.md)."""

    def __init__(self, js: JetStreamContext, from_ns: int | None, direct: bool) -> None:
        self.js = js
        self.from_ns = from_ns
        self.direct = direct
        self.gets = 0

    async def last(self, subject: str) -> _Probe | None:
        self.gets += 1
        try:
            msg = await self.js.get_msg(subjects.AGG_STREAM, subject=subject, direct=self.direct)
        except NotFoundError:
            return None
        return _probe(msg)

    async def next(self, subject: str, seq: int) -> _Probe | None:
        """The first record of `subject` at or after `seq`."""
        self.gets += 1
        try:
            msg = await self.js.get_msg(
                subjects.AGG_STREAM, seq=seq, subject=subject, next=True, direct=self.direct
            )
        except NotFoundError:
            return None
        return _probe(msg)

    def before(self, probe: _Probe) -> bool:
        """Whether this record and every earlier one of its series start before `from`."""
        return probe.high_ns is not None and probe.high_ns < (self.from_ns or 0)

    async def start(self, subject: str, last: _Probe | None = None) -> int:
        if last is None:
            last = await self.last(subject)
            if last is None:
                return 2**63  # nothing of this series (expired since it was listed)
        if self.from_ns is not None and self.before(last):
            return last.seq + 1  # nothing to read
        first = await self.next(subject, 1)
        if first is None or not self.before(first):
            return first.seq if first is not None else last.seq
        return await self._narrow(subject, first, last, _width_ns(subject))

    async def _narrow(self, subject: str, below: _Probe, above: _Probe, width: int) -> int:
        """The answer lies in (below.seq, above.seq]: `below` is before `from`, `above`
        is not."""
        assert below.high_ns is not None and self.from_ns is not None
        frm = self.from_ns
        lo, hi, upper = below.seq + 1, above.seq, above  # `upper`: the first record >= hi
        t_lo = below.high_ns
        back = 0  # > 0: stepping back from `hi` by this much (doubling)
        edge = bisecting = False
        budget = max(1, hi - lo).bit_length() // 2
        while lo < hi:
            budget -= 1
            t_hi = upper.high_ns
            span = t_hi - t_lo if t_hi is not None else 0
            if budget < 0 or bisecting or t_hi is None or span <= 0:
                guess = (lo + hi) // 2
            elif edge:
                guess = lo  # is the record after `below` already at or past `from`?
            elif back:
                guess = hi - back
            else:  # aim at the record one window before `from`
                guess = lo + (frm - width - t_lo) * (upper.seq - lo) // span
            guess = min(max(guess, lo), hi - 1)
            was_edge = edge
            probe = await self.next(subject, guess)
            if probe is None or probe.seq >= hi or not self.before(probe):
                if probe is not None and probe.seq < hi:
                    upper = probe
                spacing = (upper.seq - lo) * width // span if span > 0 else 1
                back, edge, hi = max(1, spacing, 2 * back), False, guess
            else:
                assert probe.high_ns is not None
                lo, t_lo = probe.seq + 1, probe.high_ns
                edge, back = back > 0 or frm - t_lo <= width, 0
            near = (
                probe is not None
                and probe.high_ns is not None
                and (abs(probe.high_ns - frm) * 16 <= span)
            )
            bisecting = not bisecting and not near and not was_edge
        return lo


def _width_ns(subject: str) -> int:
    """The window width of an AGG subject (`agg.<window>.<site>.<device>.<metric>`)."""
    try:
        return label_seconds(subject.split(".")[1]) * 10**9
    except (IndexError, ValueError):
        return 1


def _probe(msg: RawStreamMsg) -> _Probe:
    bounds = IndexBounds.from_headers(msg.headers)
    return _Probe(int(msg.seq or 0), None if bounds is None else bounds.high_ns)


async def read(
    js: JetStreamContext,
    sel: Selector,
    plan: Plan,
    batch: int = 1000,
    limit: int | None = None,
    counted: list[int] | None = None,
) -> list[WindowRecord]:
    """Read the plan's records in stream order; the last record of each window wins.

    Stops once every series has shown a floor at or past `sel.end_ns` (no later record
    can start before it), at the end of the stream, or after `limit` messages."""
    latest: dict[WindowId, WindowRecord] = {}
    if not plan.subjects or plan.start_seq > plan.last_seq:
        return []
    open_ = set(plan.subjects)
    async for msg_subject, data, headers in _messages(js, sel.subject(), plan, batch, limit):
        if counted is not None:
            counted[0] += 1
        record = WindowRecord.from_json(data)
        if sel.matches(record):
            latest[record.window_id] = record
        if sel.end_ns is not None:
            bounds = IndexBounds.from_headers(headers)
            if bounds is not None and bounds.floor_ns >= sel.end_ns:
                open_.discard(msg_subject)
                if not open_:
                    break
    return [latest[k] for k in sorted(latest, key=lambda k: (k[1], k[2], k[3], k[0], k[4]))]


Message = tuple[str, bytes, dict[str, str] | None]  # subject, data, headers


async def _messages(
    js: JetStreamContext, subject: str, plan: Plan, batch: int, limit: int | None
) -> AsyncIterator[Message]:
    """AGG messages on `subject` from the plan's start to the stream's end at creation."""
    sub = await js.pull_subscribe(
        subject,
        stream=subjects.AGG_STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=plan.start_seq,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        ),
    )
    info = await sub.consumer_info()
    try:
        remaining = int(info.num_pending or 0)
        if limit is not None:
            remaining = min(remaining, limit)
        while remaining > 0:
            msgs = await sub.fetch(min(batch, remaining), timeout=5.0)
            remaining -= len(msgs)
            for msg in msgs:
                yield msg.subject, msg.data, msg.headers
    finally:
        with contextlib.suppress(NatsError, TimeoutError):
            await sub.unsubscribe()
            await js.delete_consumer(subjects.AGG_STREAM, info.name)  # do not wait for expiry


@dataclass(frozen=True, slots=True)
class Series:
    """Chart-ready columns of one series: one entry per window of the chosen width."""

    site: str
    device: str
    metric: str
    unit: str
    window: str  # the width chosen for about `points` points over [from, to)
    width_s: int
    from_ns: int
    to_ns: int
    points: int  # as asked
    times: list[int]  # window starts, ns
    mean: list[float | None]  # None where a value is not finite (JSON null)
    min: list[float | None]
    max: list[float | None]
    p95: list[float | None]
    count: list[int]
    read: int  # AGG records read to answer (cost, for the curious and the benchmark)

    def to_json(self) -> bytes:
        return orjson.dumps(self)


def choose_window(widths_s: Sequence[int], span_ns: int, points: int) -> int:
    """The coarsest width that still gives at least `points` windows over the span (a
    chart of N points needs N values); the finest one if none does."""
    if not widths_s:
        raise QueryError("no window width holds this series")
    fits = [w for w in widths_s if span_ns // (w * 10**9) >= points]
    return max(fits) if fits else min(widths_s)


async def series(
    js: JetStreamContext,
    site: str,
    device: str,
    metric: str,
    from_ns: int | None,
    to_ns: int | None,
    points: int,
) -> Series:
    """One series over [from, to) in about `points` windows, from the width that fits."""
    if points < 1:
        raise ConfigError(f"points {points}: expected at least 1")
    to = to_ns if to_ns is not None else time.time_ns()
    start = from_ns if from_ns is not None else to - 86400 * 10**9
    if start >= to:
        raise ConfigError("from: must be before to")
    try:
        info = await js.stream_info(
            subjects.AGG_STREAM, subjects_filter=Selector(site, device, metric).subject()
        )
        labels = {name.split(".")[1] for name in (info.state.subjects or {})}
        if not labels:
            # No closed window yet (a series that just started has only open windows,
            # in AGG_LATEST): an empty chart, not "JetStream unavailable" (503).
            return _empty_series(site, device, metric, start, to, points)
        widths = sorted(label_seconds(label) for label in labels)
        width = choose_window(widths, to - start, points)
        label = next(lb for lb in labels if label_seconds(lb) == width)
        # A window overlapping `from` is part of the chart: start at its window.
        sel = Selector(site, device, metric, label, start - start % (width * 10**9), to)
        plan = await locate(js, sel)
        counted = [0]
        records = await read(js, sel, plan, counted=counted)
    except (NatsError, TimeoutError) as exc:
        raise QueryError(str(exc) or type(exc).__name__) from exc
    return Series(
        site=site,
        device=device,
        metric=metric,
        unit=records[-1].unit if records else "",
        window=label,
        width_s=width,
        from_ns=start,
        to_ns=to,
        points=points,
        times=[r.start_ns for r in records],
        mean=[_finite(r.mean) for r in records],
        min=[_finite(r.min) for r in records],
        max=[_finite(r.max) for r in records],
        p95=[_finite(r.p95) for r in records],
        count=[r.count for r in records],
        read=counted[0],
    )


def _empty_series(
    site: str, device: str, metric: str, from_ns: int, to_ns: int, points: int
) -> Series:
    return Series(
        site=site, device=device, metric=metric, unit="", window="", width_s=0,
        from_ns=from_ns, to_ns=to_ns, points=points, times=[], mean=[], min=[], max=[],
        p95=[], count=[], read=0,
    )  # fmt: skip


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


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

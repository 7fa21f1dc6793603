"""What the dashboard reads from JetStream besides windows: the series catalog (keys of
AGG_LATEST), the latest dead letters (DLQ) and the pipeline's counters (stream and
consumer state). Each returns typed records; cloud/views/dashboard/routes.py serves them."""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from gateway import subjects
from gateway.deadletter import DeadLetterHeaders
from gateway.kv_read import read_entries

PREVIEW_BYTES = 512  # of a dead letter's payload, shown as text
BUCKET_S = 60  # dead-letter counts per reason, per minute


@dataclass(frozen=True, slots=True)
class SeriesName:
    site: str
    device: str
    metric: str


async def catalog(js: JetStreamContext) -> list[SeriesName]:
    """Every series with a window in AGG_LATEST (any width), sorted."""
    try:
        keys = await read_entries(js, subjects.LATEST_BUCKET, keys_only=True)
    except NotFoundError:  # no aggregator has run yet
        return []
    names = set()
    for key in keys:
        parts = key.split(".")
        if len(parts) == 4:
            names.add((parts[1], parts[2], parts[3]))
    return [SeriesName(*n) for n in sorted(names)]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    seq: int
    time_ns: int
    subject: str
    reason: str
    source: str
    detail: str
    size: int
    preview: str  # the first PREVIEW_BYTES bytes as text (invalid UTF-8 replaced); not HTML


@dataclass(frozen=True, slots=True)
class DeadLetters:
    total: int  # in the DLQ stream
    latest: list[DeadLetter]  # newest first
    by_reason: dict[str, int]  # over `latest`
    per_minute: list[tuple[int, str, int]]  # (minute start ns, reason, count) over `latest`


async def dead_letters(js: JetStreamContext, limit: int) -> DeadLetters:
    try:
        info = await js.stream_info(subjects.DLQ_STREAM)
    except NotFoundError:
        return DeadLetters(0, [], {}, [])
    last, first = info.state.last_seq, info.state.first_seq
    letters: list[DeadLetter] = []
    if info.state.messages:
        letters = await _read_from(js, max(first, last - limit + 1), last)
    letters.reverse()
    reasons = Counter(d.reason for d in letters)
    minutes = Counter(
        (d.time_ns // (BUCKET_S * 10**9) * BUCKET_S * 10**9, d.reason) for d in letters
    )
    per_minute = [(t, r, n) for (t, r), n in sorted(minutes.items())]
    return DeadLetters(info.state.messages, letters, dict(reasons), per_minute)


async def _read_from(js: JetStreamContext, start: int, last: int) -> list[DeadLetter]:
    sub = await js.pull_subscribe(
        "dlq.>",
        stream=subjects.DLQ_STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        ),
    )
    out: list[DeadLetter] = []
    try:
        while len(out) < last - start + 1:
            msgs = await sub.fetch(min(500, last - start + 1 - len(out)), timeout=5.0)
            for msg in msgs:
                meta = msg.metadata
                h = DeadLetterHeaders.from_headers(msg.headers)
                out.append(
                    DeadLetter(
                        seq=meta.sequence.stream,
                        time_ns=int(meta.timestamp.timestamp() * 1e9),
                        subject=msg.subject,
                        reason=h.reason,
                        source=h.source,
                        detail=h.detail,
                        size=len(msg.data),
                        preview=msg.data[:PREVIEW_BYTES].decode("utf-8", "replace"),
                    )
                )
                if meta.sequence.stream >= last:
                    return out
    except TimeoutError:
        pass  # messages removed meanwhile (limits): what was read is the answer
    finally:
        with contextlib.suppress(NatsError, TimeoutError):
            await sub.unsubscribe()
    return out


@dataclass(frozen=True, slots=True)
class StreamCounters:
    name: str
    messages: int
    bytes: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    name: str
    pending: int  # TELEMETRY messages not yet delivered
    ack_pending: int  # delivered, not yet acknowledged
    delivered_seq: int


@dataclass(frozen=True, slots=True)
class Pipeline:
    time_ns: int
    streams: list[StreamCounters]
    consumers: list[ConsumerLag] = field(default_factory=list)


async def pipeline(js: JetStreamContext, time_ns: int) -> Pipeline:
    streams = []
    for name in (subjects.TELEMETRY_STREAM, subjects.AGG_STREAM, subjects.DLQ_STREAM):
        with contextlib.suppress(NotFoundError):
            s = (await js.stream_info(name)).state
            streams.append(StreamCounters(name, s.messages, s.bytes, s.last_seq))
    consumers = []
    with contextlib.suppress(NotFoundError):
        for c in await js.consumers_info(subjects.TELEMETRY_STREAM):
            if c.config.durable_name:  # the aggregator workers; not ad-hoc readers
                consumers.append(
                    ConsumerLag(
                        c.name,
                        int(c.num_pending or 0),
                        int(c.num_ack_pending or 0),
                        int(c.delivered.stream_seq if c.delivered else 0),
                    )
                )
    return Pipeline(time_ns, streams, sorted(consumers, key=lambda c: c.name))

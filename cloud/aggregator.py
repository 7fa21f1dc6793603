"""The aggregator worker: TELEMETRY (durable pull consumer) -> windows -> AGG, KV, DLQ.

The stream is the source of truth; the worker's only durable state is a checkpoint in the
`AGG_STATE` bucket (`cloud/tracker.py` says what it holds). Order of durable steps:

1. Fetch a batch of messages in stream order; decode each and feed it to the tracker.
   Rejected readings (late, not finite, undecodable) go to the DLQ, awaiting the PubAck.
2. Once the replay (below) is done, publish every window result that is due to AGG, in
   flight 1,000 at a time, and await every PubAck (a failed one is retried alone with the
   same `Nats-Msg-Id`), then the latest values to KV. The last chunk's PubAcks are awaited
   when next needed (`_settle`: before the next publish, the live view or a checkpoint),
   so their round trip overlaps the next fetch's work.
3. Only then write the checkpoint: "everything up to stream sequence S is reflected in
   AGG and the DLQ, and here is where to replay from".

On start the worker loads the checkpoint and (re)creates its consumer at the replay point,
so a kill -9 at any moment costs only a replay: the windows are rebuilt from the stream,
not from acks, and republished with the same ids and the same content. Window results are
idempotent (`Nats-Msg-Id` = `<subject>@<start>:<count>`, and a window's count grows with
each change), so the latest record of each window in AGG is always the exact one.

Scale-out: worker `p` of `n` aggregates the agents (TELEMETRY subjects) whose CRC-32 is `p`
mod `n`, each on its own durable consumer and checkpoint. An agent's readings are thus
always aggregated by one worker, in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from cloud.errors import Abandoned
from cloud.httpd import serve_app
from cloud.metrics import AggregatorMetrics, metrics_app
from cloud.pubacks import PubAcks
from cloud.records import IndexBounds, WindowRecord
from cloud.streams import STATE_BUCKET, ensure_streams, ttl_headers
from cloud.tracker import Tracker
from gateway import codec, envelope, subjects
from gateway.config import CloudConfig
from gateway.deadletter import DeadLetterHeaders
from gateway.errors import CodecError, InvalidTokenError

log = logging.getLogger(__name__)
SOURCE = "/iot-gateway/cloud/aggregator"
RETRY_S = 0.5
GIVE_UP_S = 3.0
# The live view recomputes the open windows' statistics (exact percentiles need every
# value): while a backlog keeps them large, it runs at most once per LIVE_SHARE times its
# own cost, so it takes at most a quarter of the worker's time. Its values are the same
# when the backlog is gone; only their updates are sparser meanwhile.
LIVE_SHARE = 4.0
RAW_CONTENT_TYPE = "application/octet-stream"  # a TELEMETRY payload that is not a batch
IN_FLIGHT = 1000  # AGG records published before their PubAcks are awaited (`PubAcks`)


@dataclass(slots=True)
class AggregatorStats:
    messages: int = 0
    readings: int = 0
    windows_published: int = 0
    late_readings: int = 0
    bad_readings: int = 0
    bad_messages: int = 0
    replayed_messages: int = 0
    resyncs: int = 0
    duplicate_readings: int = 0  # copies of held readings dropped (replays included)
    summaries: int = 0  # edge summaries merged into windows
    summarised_readings: int = 0  # the readings those summaries stand for


def partition_of(subject: str, partitions: int) -> int:
    return zlib.crc32(subject.encode()) % partitions


@dataclass(frozen=True, slots=True)
class _Sent:
    """An AGG record published, and the reply subject of its PubAck (None: not sent)."""

    reply: str | None
    subject: str
    data: bytes
    headers: dict[str, str]


class _Names:
    """Each series' AGG subject and KV key, validated once, not once per record (the
    token checks were a tenth of the worker's time). Bounded: forgotten past `limit`."""

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._names: dict[tuple[str, str, str, str], tuple[str, str, str]] = {}

    def of(self, r: WindowRecord) -> tuple[str, str, str]:
        """(AGG subject, `AGG_LATEST` key, its KV subject) of the record's series."""
        series = (r.window, r.site, r.device, r.metric)
        names = self._names.get(series)
        if names is None:
            if len(self._names) >= self._limit:
                self._names.clear()
            key = r.latest_key()
            kv = subjects.kv_subject(subjects.LATEST_BUCKET, key)
            names = self._names[series] = (r.subject(), key, kv)
        return names


class Aggregator:
    def __init__(self, config: CloudConfig, partition: int = 0, partitions: int = 1) -> None:
        if not 0 <= partition < partitions:
            raise ValueError(f"partition {partition} is not in 0..{partitions - 1}")
        self.config = config
        self.partition = partition
        self.partitions = partitions
        self.name = f"aggregator-{partition}of{partitions}"
        s = config.aggregator
        self.tracker = Tracker(list(s.windows_s), s.lateness_s)
        self.stats = AggregatorStats()
        self.metrics = AggregatorMetrics(f"{partition}/{partitions}")
        self.metrics_port: int | None = None
        self.last_seq = 0  # every message up to here is processed
        self._last_cseq = 0
        self._last_seen: dict[str, float] = {}
        self._shown: dict[str, int] = {}  # KV key -> start of the window it shows
        self._ttl: dict[str, dict[str, str]] = {}  # window label -> its Nats-TTL header
        self._names = _Names()
        self._acks = PubAcks()
        self._unacked: list[_Sent] = []  # published, PubAck not yet awaited (`_settle`)
        self._unshown: list[WindowRecord] = []  # published, not yet put in KV
        self._nc: NatsClient | None = None
        self._stop = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, nc: NatsClient, stop: asyncio.Event) -> None:
        self._stop = stop
        try:
            await self._run(nc, stop)
        except* Abandoned as group:  # raised inside the TaskGroup, so in a group
            log.warning(
                "%s: stopped with %s unpublished; the next start replays it",
                self.name,
                group.exceptions[0],
            )

    async def _run(self, nc: NatsClient, stop: asyncio.Event) -> None:
        js = nc.jetstream()
        await ensure_streams(js, self.config.streams, update=False)
        self._nc = nc
        self._ttl = await self._ttl_headers(js)
        state = await js.key_value(STATE_BUCKET)
        start = await self._restore(js, state)
        port = self.config.aggregator.metrics_port
        async with contextlib.AsyncExitStack() as stack:
            if port is not None:
                self.metrics_port = await stack.enter_async_context(
                    serve_app(metrics_app(self.metrics), port)
                )
            await self._acks.start(nc)
            stack.push_async_callback(self._acks.stop)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch_lag(js, stop), name="lag")
                await self._consume(js, state, start, stop)

    async def _ttl_headers(self, js: JetStreamContext) -> dict[str, dict[str, str]]:
        """Per-width TTLs, if AGG accepts them (a stream from before they existed does not
        until `gateway cloud init` updates it; its records then keep the stream's limits)."""
        info = await js.stream_info(subjects.AGG_STREAM)
        if not info.config.allow_msg_ttl:
            log.warning(
                "%s: AGG has no per-message TTLs; run `gateway cloud init` to apply "
                "[streams] agg_retention_s",
                self.name,
            )
            return {}
        return ttl_headers(self.config.streams)

    async def _restore(self, js: JetStreamContext, state: KeyValue) -> int:
        try:
            entry = await state.get(self.name)
        except KeyNotFoundError:
            return 1
        if entry.value is None:
            return 1
        stream_last = (await js.stream_info(subjects.TELEMETRY_STREAM)).state.last_seq
        try:
            start = self.tracker.restore(orjson.loads(zlib.decompress(entry.value)))
            if self.tracker.replay_until > stream_last:
                raise ValueError(f"it is past the end of TELEMETRY ({stream_last}): new stream?")
        except (zlib.error, orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
            # E.g. the window widths changed: rebuild everything from the stream instead.
            log.warning(
                "%s: checkpoint unusable (%s); starting from the stream's start", self.name, exc
            )
            s = self.config.aggregator
            self.tracker = Tracker(list(s.windows_s), s.lateness_s)
            return 1
        log.info("%s: resuming; replaying from stream sequence %d", self.name, start)
        return start

    async def _open(self, js: JetStreamContext, start: int) -> JetStreamContext.PullSubscription:
        """(Re)create this worker's durable consumer to deliver from stream seq `start`."""
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(subjects.TELEMETRY_STREAM, self.name)
        cfg = ConsumerConfig(
            durable_name=self.name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None,
            ack_policy=AckPolicy.ALL,
            ack_wait=60.0,
            max_ack_pending=-1,
            filter_subject="telemetry.>",
        )
        await js.add_consumer(subjects.TELEMETRY_STREAM, cfg)
        self._last_cseq = 0
        return await js.pull_subscribe_bind(self.name, stream=subjects.TELEMETRY_STREAM)

    async def _reopen(
        self,
        js: JetStreamContext,
        stop: asyncio.Event,
        old: JetStreamContext.PullSubscription | None = None,
    ) -> JetStreamContext.PullSubscription | None:
        if old is not None:
            with contextlib.suppress(NatsError, TimeoutError):
                await old.unsubscribe()
        while not stop.is_set():
            try:
                return await self._open(js, self.last_seq + 1)
            except (NatsError, TimeoutError) as exc:
                log.warning("%s: cannot (re)create consumer: %s", self.name, exc)
                await asyncio.sleep(RETRY_S)
        return None

    # -- the loop --------------------------------------------------------------------------

    async def _consume(
        self,
        js: JetStreamContext,
        state: KeyValue,
        start: int,
        stop: asyncio.Event,
    ) -> None:
        s = self.config.aggregator
        self.last_seq = start - 1
        sub = await self._reopen(js, stop)
        # The live view at most every `live_update_s` (from the start too: a backlog
        # then pays for it once per interval, not once per fetch).
        next_live, next_ckpt = time.monotonic() + s.live_update_s, 0.0
        ckpt_seq = self.last_seq
        ahead = _Prefetch()
        try:
            while sub is not None and not stop.is_set():
                try:
                    msgs = await ahead.take(sub, s.fetch_batch)
                except TimeoutError:
                    msgs = []
                except NatsError as exc:
                    log.warning("%s: fetch failed (%s); re-creating the consumer", self.name, exc)
                    await asyncio.sleep(RETRY_S)
                    sub = await self._reopen(js, stop, sub)
                    continue
                if len(msgs) == s.fetch_batch:
                    ahead.start(sub, s.fetch_batch)  # a backlog: fetch while processing
                if msgs and not await self._process(js, msgs):
                    self.stats.resyncs += 1
                    await ahead.cancel()
                    sub = await self._reopen(js, stop, sub)
                    continue
                if self.last_seq < self.tracker.replay_until and msgs:
                    continue  # still replaying: results are due once the state is whole
                published = await self._publish_due(js)
                now = time.monotonic()
                if now >= next_live:
                    await self._publish_live(js)
                    spent = time.monotonic() - now
                    next_live = now + max(s.live_update_s, LIVE_SHARE * spent)
                if (published or self.last_seq != ckpt_seq) and now >= next_ckpt:
                    # Once every window due up to `last_seq` is in AGG (`_settle`).
                    await self._checkpoint(js, state)
                    ckpt_seq = self.last_seq
                    next_ckpt = now + s.checkpoint_interval_s
        finally:
            await ahead.cancel()  # its messages are redelivered to the next consumer
        if sub is not None:
            with contextlib.suppress(NatsError, TimeoutError):
                await sub.unsubscribe()
        if self.last_seq >= self.tracker.replay_until:
            await self._publish_due(js)
            await self._checkpoint(js, state)
            await self._publish_live(js)  # the readings since the last update, if any

    async def _process(self, js: JetStreamContext, msgs: list[Msg]) -> bool:
        """Ingest fetched messages in order; False if a delivery was missed (resync)."""
        for msg in msgs:
            meta = msg.metadata
            if meta.sequence.stream <= self.last_seq:
                continue  # a redelivery of something already processed
            if meta.sequence.consumer != self._last_cseq + 1:
                log.warning("%s: delivery gap at stream seq %d", self.name, meta.sequence.stream)
                return False
            self._last_cseq = meta.sequence.consumer
            if partition_of(msg.subject, self.partitions) == self.partition:
                await self._ingest(js, msg, meta.sequence.stream)
            self.last_seq = meta.sequence.stream
        with contextlib.suppress(NatsError, TimeoutError):
            await msgs[-1].ack()  # AckPolicy.ALL: acknowledges the whole batch
        return True

    async def _ingest(self, js: JetStreamContext, msg: Msg, sseq: int) -> None:
        replaying = sseq <= self.tracker.replay_until
        self.stats.messages += 1
        self.metrics.messages.inc()
        if replaying:
            self.stats.replayed_messages += 1
            self.metrics.replayed.inc()
            if self.tracker.skips(msg.subject, sseq):
                return
        try:
            batch = codec.decode(msg.data)
        except CodecError as exc:
            if not replaying:
                self.stats.bad_messages += 1
                self.metrics.bad.inc()
                await self._dead_letter(
                    js, msg.subject, sseq, "not_a_batch", msg.data, str(exc), RAW_CONTENT_TYPE
                )
            return
        self._last_seen[msg.subject] = time.monotonic()
        # Summaries (edge `overflow = "downsample"`) merge into the windows with the
        # readings (cloud/summaries.py); late ones go to the DLQ like late readings.
        result = self.tracker.ingest(msg.subject, sseq, batch)
        if not replaying:
            self.stats.readings += result.accepted
            self.metrics.readings.inc(result.accepted)
            self.stats.summaries += result.summaries
            self.metrics.summaries.inc(result.summaries)
            self.stats.summarised_readings += result.summarised
            self.metrics.summarised.inc(result.summarised)
        for rejected in result.rejected:
            n = rejected.readings(batch)
            if rejected.reason.startswith("late"):
                self.stats.late_readings += n
                self.metrics.late.inc(n)
            else:
                self.stats.bad_readings += n
                self.metrics.bad.inc(n)
            part = _subset(batch, rejected.rows, rejected.reason, rejected.summaries)
            kind, detail = codec.CONTENT_TYPE, f"{n} readings"
            if part.summaries:
                kind = codec.SUMMARY_CONTENT_TYPE
                detail += f" ({len(part.summaries)} summaries)"
            await self._dead_letter(
                js, msg.subject, sseq, rejected.reason, codec.encode(part), detail, kind
            )

    async def _dead_letter(
        self,
        js: JetStreamContext,
        subject: str,
        sseq: int,
        reason: str,
        data: bytes,
        detail: str,
        content_type: str = codec.CONTENT_TYPE,
    ) -> None:
        tokens = subject.split(".")
        try:
            dlq = subjects.dlq(tokens[1], tokens[2])
        except (IndexError, InvalidTokenError):
            dlq = subjects.dlq("unknown", "unknown")
        headers = envelope.headers(
            event_id=f"aggregator:{sseq}:{reason}",
            source=SOURCE,
            event_type=envelope.DEAD_LETTER_TYPE,
            content_type=content_type,
        )
        headers.update(
            DeadLetterHeaders(reason, source=subject, detail=detail, source_seq=sseq).to_headers()
        )
        await self._publish(js, dlq, data, headers)

    async def _publish(
        self, js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str]
    ) -> None:
        """Publish until JetStream acknowledges (same `Nats-Msg-Id` on every try).

        Once asked to stop, give up after `GIVE_UP_S`: `Abandoned` unwinds without a new
        checkpoint, so the next start replays and publishes what this one could not."""
        deadline: float | None = None
        while True:
            try:
                timeout = 1.0 if self._stop.is_set() else 5.0
                await js.publish(subject, data, headers=headers, timeout=timeout)
                return
            except (NatsError, TimeoutError) as exc:
                if self._stop.is_set():
                    deadline = deadline or time.monotonic() + GIVE_UP_S
                    if time.monotonic() > deadline:
                        raise Abandoned(subject) from exc
                log.warning("%s: publish to %s failed (%s); retrying", self.name, subject, exc)
                await asyncio.sleep(RETRY_S)

    async def _publish_due(self, js: JetStreamContext) -> int:
        """Publish the due records; the last `IN_FLIGHT` of them may still await their
        PubAcks on return (`_settle`), so that round trip overlaps the next fetch's work."""
        await self._settle(js)  # the previous call's records are all in AGG first
        now = time.monotonic()
        s = self.config.aggregator
        idle = {a for a, t in self._last_seen.items() if now - t >= s.idle_close_s}
        gone = frozenset(a for a in idle if now - self._last_seen[a] >= s.idle_final_s)
        indexed = self.tracker.due_indexed(idle, gone)
        dup = self.tracker.duplicates
        self.metrics.duplicates.inc(max(0, dup - self.stats.duplicate_readings))
        self.stats.duplicate_readings = dup
        await self._publish_records(js, indexed)
        records = [r for r, _ in indexed]
        self.stats.windows_published += len(records)
        self.metrics.windows.inc(len(records))
        self._unshown = records
        return len(records)

    async def _settle(self, js: JetStreamContext) -> None:
        """Await the PubAcks still outstanding (republishing what failed), then show the
        records in KV: on return every record published so far is in AGG."""
        sent, self._unacked = self._unacked, []
        await self._await_acks(js, sent)
        records, self._unshown = self._unshown, []
        await self._put_latest(records)

    async def _publish_records(
        self, js: JetStreamContext, indexed: list[tuple[WindowRecord, IndexBounds]]
    ) -> None:
        """Publish records to AGG, up to `IN_FLIGHT` at once; all but the last chunk's are
        acked on return, the last chunk's by the next `_settle`.

        Pipelined: one PubAck round trip per `IN_FLIGHT` records instead of one per record.
        A record whose PubAck fails or does not come in time is published again, alone and
        with the same `Nats-Msg-Id`, until acked (`_publish`), so nothing is checkpointed
        before every record is in AGG. The order within a call does not matter: a call
        holds at most one record per window, and the records of one series and width in
        it carry the same `IndexBounds`, which hold whatever their order; the next call
        starts only once this one's records are all acked, so later records of a window
        stay after earlier ones in AGG (last record wins)."""
        for chunk in range(0, len(indexed), IN_FLIGHT):
            await self._await_acks(js, self._unacked)
            self._unacked = await self._send(js, indexed[chunk : chunk + IN_FLIGHT])

    async def _send(
        self, js: JetStreamContext, indexed: list[tuple[WindowRecord, IndexBounds]]
    ) -> list[_Sent]:
        sent: list[_Sent] = []
        for record, bounds in indexed:
            subject = self._names.of(record)[0]
            headers = {"Nats-Msg-Id": record.msg_id(subject), **bounds.to_headers()}
            headers.update(self._ttl.get(record.window, {}))
            data = record.to_json()
            try:
                reply: str | None = await self._acks.publish(subject, data, headers)
            except (NatsError, TimeoutError):
                reply = None  # published again by `_await_acks`, alone
            sent.append(_Sent(reply, subject, data, headers))
        return sent

    async def _await_acks(self, js: JetStreamContext, sent: list[_Sent]) -> None:
        replies = [x.reply for x in sent if x.reply is not None]
        acked: set[str] = set()
        if replies:
            acked = await self._acks.wait(replies, timeout=1.0 if self._stop.is_set() else 5.0)
        for x in sent:
            if x.reply not in acked:
                await self._publish(js, x.subject, x.data, x.headers)

    async def _publish_live(self, js: JetStreamContext) -> None:
        await self._settle(js)  # closed records to KV first, as before the acks overlapped
        await self._put_latest(self.tracker.live())

    async def _put_latest(self, records: list[WindowRecord]) -> None:
        """Best effort: the KV bucket is a convenience for live views, AGG is the record."""
        newest: dict[str, WindowRecord] = {}
        kv_subject: dict[str, str] = {}
        for r in records:
            _, key, kv_subject[key] = self._names.of(r)
            if key not in newest or newest[key].start_ns <= r.start_ns:
                newest[key] = r
        # Never replace a newer window on display by an older one closing late.
        items = [(k, r) for k, r in newest.items() if r.start_ns >= self._shown.get(k, 0)]
        self._shown.update((k, r.start_ns) for k, r in items)
        # A KV put is a publish to the bucket's subject; without awaiting each PubAck, the
        # live view costs one buffered write per series instead of one round trip.
        nc = self._nc
        assert nc is not None, "run() sets the connection"
        with contextlib.suppress(NatsError):
            for key, r in items:
                await nc.publish(kv_subject[key], r.to_json())

    async def _checkpoint(self, js: JetStreamContext, state: KeyValue) -> None:
        if self.last_seq < self.tracker.replay_until:
            return  # mid-replay the old checkpoint is still the right one
        await self._settle(js)  # every due record is in AGG: safe to move on
        doc = self.tracker.checkpoint(self.last_seq)
        doc["written"] = datetime.now(UTC).isoformat()
        try:
            # Compressed: one entry per agent, thousands of agents, under the 1 MB limit.
            await state.put(self.name, zlib.compress(orjson.dumps(doc)))
        except (NatsError, TimeoutError) as exc:
            log.warning("%s: checkpoint not written (%s); next time", self.name, exc)

    async def _watch_lag(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.metrics.sample_rates(self.stats.readings, self.stats.windows_published)
            with contextlib.suppress(NatsError, TimeoutError):
                info = await js.consumer_info(subjects.TELEMETRY_STREAM, self.name)
                pending = int(info.num_pending or 0)
                self.metrics.pending.set(pending)
                age = 0.0
                if pending:
                    nxt = await js.get_msg(subjects.TELEMETRY_STREAM, self.last_seq + 1)
                    if nxt.time is not None:
                        age = max(0.0, (datetime.now(UTC) - nxt.time).total_seconds())
                self.metrics.lag_age.set(age)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)


def _subset(
    batch: codec.Batch, rows: Any, reason: str, summaries: tuple[int, ...] = ()
) -> codec.Batch:
    return codec.Batch(
        site=batch.site,
        agent=batch.agent,
        batch_id=f"{batch.batch_id}:{reason}",
        series=batch.series,
        time_ns=batch.time_ns[rows],
        value=batch.value[rows],
        seq=batch.seq[rows],
        series_index=batch.series_index[rows],
        flags=batch.flags[rows],
        summaries=tuple(batch.summaries[i] for i in summaries),
    )


class _Prefetch:
    """At most one fetch in flight ahead of the batch being processed, so the round trip
    of the next fetch overlaps the work on this one (deliveries stay in order: one
    consumer, one fetch at a time)."""

    def __init__(self) -> None:
        self._task: asyncio.Task[list[Msg]] | None = None

    def start(self, sub: JetStreamContext.PullSubscription, batch: int) -> None:
        self._task = asyncio.create_task(sub.fetch(batch, timeout=0.5), name="prefetch")

    async def take(self, sub: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
        task, self._task = self._task, None
        if task is None:
            return await sub.fetch(batch, timeout=0.5)
        return await task

    async def cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, NatsError, TimeoutError):
                await task

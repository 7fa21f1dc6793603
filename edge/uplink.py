"""The uplink: publishes buffered batches to JetStream and deletes them after the PubAck.

Only a PubAck counts as delivered: bytes written to a socket that then dies are lost, and
a retry carries the same `Nats-Msg-Id`, which JetStream deduplicates within the stream's
duplicate window. One round:

  1. read the oldest `max_batches_per_round` batches;
  2. any of them first tried longer ago than half the duplicate window may be in the stream
     already, beyond the reach of `Nats-Msg-Id`: ask the stream (a headers-only consumer on
     our subject, from the first attempt's time) which batch ids it holds, and delete those
     without resending;
  3. mark the rest attempted (durably, before any byte leaves), publish them all with
     `publish_async` (pipelined: the whole window in flight at once), and wait for the
     PubAcks under our own deadline: nats-py's futures have none and can hang forever on a
     server error (nats-io/nats.py#985), so unresolved ones are cancelled;
  4. delete the acknowledged batches in one transaction; on any failure back off
     (exponential, capped, equal jitter: `gateway.retry.Backoff`) and start again from 1.

Batches go out oldest first, so after an outage the backlog drains at full speed while
live readings queue behind it: per device, the stream stays in seq order within one agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError

from edge.buffer import SqliteBuffer, StoredBatch, StoredDeadLetter
from edge.errors import BufferStoreError, PublishFailed
from gateway import envelope, subjects
from gateway.config import UplinkSettings
from gateway.deadletter import ORIGINAL_DIGEST, ORIGINAL_SIZE, DeadLetterHeaders
from gateway.retry import Backoff

log = logging.getLogger(__name__)

DEAD_LETTER_CONTENT_TYPE = "application/octet-stream"
# Clock difference tolerated between the agent and the server when scanning by time.
_SCAN_SLACK_S = 60.0


_WINDOWS_PER_ROUND = 16  # then dead letters get their turn again
_DEPTH = 3  # publish windows in flight at once
_FIRST_READ = 16  # batches read before the pipeline starts
# Room kept for headers (the envelope's and a dead letter's: about 600 bytes) under the
# server's max_payload, which counts headers and payload together.
_HEADER_ROOM = 4096


@dataclass(slots=True)
class _Window:
    """Batches published together, and their PubAck futures."""

    batches: list[StoredBatch]
    futures: list[asyncio.Future[Any]]
    started: float
    send_error: Exception | None = None


@dataclass(slots=True)
class UplinkStats:
    batches_published: int = 0
    readings_published: int = 0
    dead_letters_published: int = 0
    duplicate_acks: int = 0
    publish_errors: int = 0
    publish_timeouts: int = 0
    reconciled_batches: int = 0  # found in the stream beyond the dedupe window, not resent
    truncated_dead_letters: int = 0  # cut to fit the server's max_payload
    quarantined_batches: int = 0  # larger than the server takes: dropped, counted
    in_flight: int = 0
    latency_ms: float = 0.0  # moving average, a window's first send to its last PubAck
    drain_rate: float = 0.0  # readings/s, moving average over rounds that drained a backlog


def _backoff(settings: UplinkSettings) -> Backoff:
    return Backoff(settings.backoff_first_s, settings.backoff_max_s)


async def stored_batch_ids(
    js: JetStreamContext, subject: str, since_ns: int, fetch: int = 512
) -> set[str]:
    """The `Nats-Msg-Id`s the stream holds on `subject` from `since_ns` on (headers only)."""
    start = dt.datetime.fromtimestamp(since_ns / 1e9 - _SCAN_SLACK_S, tz=dt.UTC)
    sub = await js.pull_subscribe(
        subject,
        stream=subjects.TELEMETRY_STREAM,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=start,
            headers_only=True,
            inactive_threshold=30.0,
        ),
    )
    ids: set[str] = set()
    try:
        while True:
            try:
                msgs = await sub.fetch(fetch, timeout=2.0)
            except TimeoutError:
                break
            ids.update((m.headers or {}).get("Nats-Msg-Id", "") for m in msgs)
            if msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return ids


class Uplink:
    """Forwards `buffer` for one agent; `settings` may be replaced while it runs
    (`reconfigure`), each round reading them afresh."""

    def __init__(
        self,
        site: str,
        agent: str,
        settings: UplinkSettings,
        buffer: SqliteBuffer,
        wake: asyncio.Event,
    ) -> None:
        self.agent = agent
        self.buffer = buffer
        self.wake = wake
        self.drained = asyncio.Event()  # set whenever batches were deleted (room freed)
        self.stats = UplinkStats()
        self.subject = subjects.telemetry(site, agent)
        self.dlq_subject = subjects.dlq(site, agent)
        self.source = envelope.agent_source(site, agent)
        self._dedupe_window_ns: int | None = None
        self.max_payload = 1 << 20  # the server's, learnt from each connection's INFO
        self.settings = settings
        self.backoff = _backoff(settings)
        self.last_progress = time.monotonic()  # a batch published: stall detection (health)
        self._failing = False  # in a streak of failed rounds: logged once, at its start

    def reconfigure(self, settings: UplinkSettings) -> None:
        """Use `settings` from the next round on; a changed backoff starts afresh."""
        if (settings.backoff_first_s, settings.backoff_max_s) != (
            self.settings.backoff_first_s,
            self.settings.backoff_max_s,
        ):
            self.backoff = _backoff(settings)
        self.settings = settings

    async def run(self, nc: NatsClient) -> None:
        """Forward the buffer forever; returns only by cancellation."""
        js = nc.jetstream()
        while True:
            if nc.is_closed:  # for good (the server closed it): the agent connects again
                return
            self.max_payload = nc.max_payload or self.max_payload
            if not nc.is_connected:  # publishing now would only fill nats-py's pending buffer
                await asyncio.sleep(self.backoff.next())
                continue
            try:
                sent = await self._forward_round(js)
            except (
                NatsError,
                JetStreamError,
                TimeoutError,
                PublishFailed,
                BufferStoreError,
            ) as exc:
                self.stats.publish_errors += 1
                self._dedupe_window_ns = None  # the stream may have been recreated
                delay = self.backoff.next()
                # once per streak: a cloud refusing for an hour must not fill the log
                log.log(
                    logging.DEBUG if self._failing else logging.WARNING,
                    "publish failed (%s: %s); retrying in %.2fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self._failing = True
                await asyncio.sleep(delay)
                continue
            if self._failing:
                self._failing = False
                log.info("publishing again")
            self.backoff.reset()
            if not sent:
                self.wake.clear()
                self.buffer.expire()
                await self._wait_for_work()

    async def forward_remaining(self, nc: NatsClient, timeout: float) -> None:
        """On an orderly stop: send what is buffered, within `timeout`; what is left stays
        buffered for the next start."""
        if not nc.is_connected:
            return
        js = nc.jetstream()
        self.max_payload = nc.max_payload or self.max_payload
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                while time.monotonic() < deadline and await self._forward_round(js):
                    pass
        except (NatsError, JetStreamError, TimeoutError, PublishFailed, BufferStoreError) as exc:
            log.info("stopping with batches still buffered (%s)", exc)

    async def _wait_for_work(self) -> None:
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=1.0)
        except TimeoutError:
            pass

    async def _forward_round(self, js: JetStreamContext) -> int:
        """Dead letters, then up to `_WINDOWS_PER_ROUND` windows of batches, `_DEPTH` in
        flight: while the oldest window's PubAcks come back, the next is read and sent.

        Reads happen on the loop thread (a few ms per window): a worker thread measured
        slower, as its GIL hand-offs cost the publishing loop more than the read itself."""
        limit = self.settings.max_batches_per_round
        letters = self.buffer.oldest_dead_letters(limit)
        for letter in letters:
            await self._publish_dead_letter(js, letter)
        done = windows = 0
        started, published = time.monotonic(), self.stats.readings_published
        pending: deque[_Window] = deque()
        # A short first read: it is the one read not overlapped with PubAcks in flight.
        cap = self.settings.max_window_bytes
        batches = self.buffer.oldest_batches(min(limit, _FIRST_READ), max_bytes=cap)
        try:
            for _ in range(_WINDOWS_PER_ROUND):
                if not batches:
                    break
                done += len(batches)  # sent now, found in the stream, or quarantined
                last_row = batches[-1].row
                batches = self._quarantine_oversized(batches)
                batches = await self._skip_stored(js, batches)
                if batches:
                    pending.append(await self._send(js, batches))
                    windows += 1
                batches = self.buffer.oldest_batches(limit, last_row, max_bytes=cap)
                while pending and (len(pending) >= _DEPTH or not batches):
                    await self._settle(pending.popleft())
            while pending:
                await self._settle(pending.popleft())
            if windows > 1:  # a backlog: a trickle of live readings says nothing of the rate
                self._record_rate(
                    self.stats.readings_published - published, time.monotonic() - started
                )
        finally:
            for window in pending:  # after a failure: keep what was acked, resend the rest
                with contextlib.suppress(PublishFailed):
                    await self._settle(window)
        return len(letters) + done

    def _quarantine_oversized(self, batches: list[StoredBatch]) -> list[StoredBatch]:
        """A batch the server would refuse for good (larger than its max_payload) must not
        block the rest: it is dropped, counted as `dropped: quarantined` by source."""
        room = self.max_payload - _HEADER_ROOM
        big = [b for b in batches if len(b.payload) > room]
        if not big:
            return batches
        readings = self.buffer.quarantine_batches(big, "quarantined")
        self.stats.quarantined_batches += len(big)
        log.error(
            "quarantined %d batches (%d readings) larger than the server's max_payload %d",
            len(big),
            readings,
            self.max_payload,
        )
        return [b for b in batches if len(b.payload) <= room]

    # -- duplicates beyond the dedupe window ------------------------------------------------
    async def _window_ns(self, js: JetStreamContext) -> int:
        if self._dedupe_window_ns is None:
            info = await js.stream_info(subjects.TELEMETRY_STREAM)
            self._dedupe_window_ns = int((info.config.duplicate_window or 0) * 1e9)
        return self._dedupe_window_ns

    async def _skip_stored(
        self, js: JetStreamContext, batches: list[StoredBatch]
    ) -> list[StoredBatch]:
        """Delete (as published) the batches the stream already holds from an old attempt."""
        horizon = time.time_ns() - await self._window_ns(js) // 2
        stale = [b for b in batches if b.attempted_ns is not None and b.attempted_ns < horizon]
        if not stale:
            return batches
        since = min(b.attempted_ns for b in stale if b.attempted_ns is not None)
        held = await stored_batch_ids(js, self.subject, since)
        found = [b for b in stale if b.batch_id in held]
        if found:
            self._account(found, self.buffer.delete_batches(found))
            self.stats.reconciled_batches += len(found)
            log.info(
                "%d batches were already in the stream (outside the dedupe window); not resent",
                len(found),
            )
        skip = {b.row for b in found}
        return [b for b in batches if b.row not in skip]

    # -- pipelined publishing ---------------------------------------------------------------
    async def _send(self, js: JetStreamContext, batches: list[StoredBatch]) -> _Window:
        """Mark the batches attempted (durably, first), then publish them without waiting."""
        self.buffer.mark_attempted(b.row for b in batches if b.attempted_ns is None)
        window = _Window(batches, [], time.monotonic())
        try:
            for b in batches:
                # No wait_stall: three windows stay far below nats-py's pending limit (4000),
                # and a stall timeout costs a task per publish.
                fut = await js.publish_async(self.subject, b.payload, headers=self._headers(b))
                window.futures.append(fut)
        except (NatsError, JetStreamError) as exc:
            window.send_error = exc  # settle what was sent, then report
        self.stats.in_flight += len(window.futures)
        return window

    async def _settle(self, window: _Window) -> None:
        """Wait for the window's PubAcks under our own deadline, delete what was acked."""
        futures = window.futures
        try:
            if futures:
                remaining = window.started + self.settings.publish_timeout_s - time.monotonic()
                _, late = await asyncio.wait(futures, timeout=max(0.0, remaining))
                if not late:
                    self._record_latency(window)
        finally:
            self.stats.in_flight -= len(futures)
            for fut in futures:
                fut.cancel()  # our deadline: no future outlives the window (nats.py#985)
        failure: BaseException | None = window.send_error
        acked: list[StoredBatch] = []
        for b, fut in zip(window.batches, futures, strict=False):
            if fut.cancelled():
                self.stats.publish_timeouts += 1
                failure = failure or TimeoutError("no PubAck before the deadline")
            elif (exc := fut.exception()) is not None:
                failure = failure or exc
            else:
                acked.append(b)
                self.stats.duplicate_acks += int(bool(fut.result().duplicate))
        readings = self.buffer.delete_batches(acked)
        self._account(acked, readings)
        if failure is not None or len(futures) < len(window.batches):
            raise PublishFailed(
                f"{len(window.batches) - len(acked)} of {len(window.batches)} batches"
                f" unacknowledged: {failure}"
            )

    def _record_rate(self, readings: int, elapsed: float) -> None:
        """Drain rate, from rounds of several windows (a backlog)."""
        if elapsed > 0:
            rate = readings / elapsed
            avg = self.stats.drain_rate
            self.stats.drain_rate = rate if not avg else 0.8 * avg + 0.2 * rate

    def _account(self, batches: list[StoredBatch], readings: int) -> None:
        self.stats.batches_published += len(batches)
        self.stats.readings_published += readings
        if batches:
            self.last_progress = time.monotonic()
            self.drained.set()

    def _record_latency(self, window: _Window) -> None:
        """From a window's first send to its last PubAck: one figure per window, as a
        callback per publish cost the drain a measurable share (docs/benchmarks.md)."""
        ms = (time.monotonic() - window.started) * 1000
        avg = self.stats.latency_ms
        self.stats.latency_ms = ms if not avg else 0.9 * avg + 0.1 * ms

    def _headers(self, batch: StoredBatch) -> dict[str, str]:
        return envelope.headers(
            event_id=batch.batch_id,
            source=self.source,
            event_type=envelope.BATCH_TYPE,
            content_type=batch.content_type,
            time_ns=batch.created_ns,
        )

    def metrics(self, buffered_readings: int) -> dict[str, Any]:
        """Uplink figures for the heartbeat, with the estimated time to drain the backlog."""
        out: dict[str, Any] = {k: getattr(self.stats, k) for k in self.stats.__dataclass_fields__}
        rate = self.stats.drain_rate
        out["drain_eta_s"] = round(buffered_readings / rate, 1) if rate > 0 else None
        return out

    async def _publish_dead_letter(self, js: JetStreamContext, stored: StoredDeadLetter) -> None:
        # created_ns too: buffers made before ids were AUTOINCREMENT reuse rowids.
        event_id = f"{self.agent}:{self.buffer.instance}:dl:{stored.row}:{stored.created_ns}"
        hdrs = envelope.headers(
            event_id=event_id,
            source=self.source,
            event_type=envelope.DEAD_LETTER_TYPE,
            content_type=DEAD_LETTER_CONTENT_TYPE,
            time_ns=stored.created_ns,
        )
        letter = stored.letter
        detail = letter.detail[:200].replace("\n", " ")
        hdrs.update(DeadLetterHeaders(letter.reason, letter.source, detail).to_headers())
        payload = letter.payload
        room = self.max_payload - _HEADER_ROOM
        if len(payload) > room:  # would close the connection: cut it, say what it was
            hdrs[ORIGINAL_SIZE] = str(len(payload))
            hdrs[ORIGINAL_DIGEST] = hashlib.sha256(payload).hexdigest()
            payload = payload[: max(0, room)]
            self.stats.truncated_dead_letters += 1
        await js.publish(
            self.dlq_subject,
            payload,
            headers=hdrs,
            timeout=self.settings.publish_timeout_s,
        )
        self.buffer.delete_dead_letters([stored.row])
        self.stats.dead_letters_published += 1

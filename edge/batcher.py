"""Forms batches: readings go straight into column arrays; a batch is due on max readings,
max bytes or linger time (monotonic clock). The open batch also carries the delivery
records of its messages (edge/dedupe.py), made durable together with it, which is what
lets a broker's redelivery of a message already taken be recognised and dropped. A
reading is dropped here only as an exact copy of a recent one (same series, seq, event
time and value: a device that sent it twice; `ExactCopies`), never by its seq alone."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.buffer import DeadLetter, PendingBatch
from edge.decoders.context import NO_SEQ, SeriesColumns
from edge.dedupe import DeliveryLog, ExactCopies, PendingDeliveries
from edge.validation import SeriesCheck
from gateway import codec
from gateway.config import BatchSettings
from gateway.reading import Reading

_BYTES_PER_READING = 30  # the fixed-width columns of one reading on the wire
# Readings remembered per series for `ExactCopies`, about 180 bytes each: a device's own
# resend comes within its MQTT in-flight window (paho's default: 20 messages), and each
# remembered reading is resident memory (256 a series was 45 MiB at 1,000 devices once
# filled; docs/benchmarks.md). A copy from further back reaches the cloud, which counts
# a reading once however often it arrives.
_COPIES_PER_SERIES = 32


@dataclass(slots=True)
class Flush:
    """What one flush makes durable, and the source messages to acknowledge after."""

    batch: PendingBatch | None
    dead_letters: list[DeadLetter]
    deliveries: PendingDeliveries
    acks: list[Any]
    redelivered: int  # messages recognised as copies, dropped (their acks are in `acks`)
    duplicates: int = 0  # readings dropped as exact copies (`ExactCopies`)


@dataclass(slots=True)
class _Open:
    builder: codec.ColumnBuilder
    started: float
    dead_letters: list[DeadLetter] = field(default_factory=list)
    deliveries: PendingDeliveries = field(default_factory=PendingDeliveries)
    acks: list[Any] = field(default_factory=list)
    redelivered: int = 0
    duplicates: int = 0
    approx_bytes: int = 0


class Batcher:
    def __init__(
        self,
        site: str,
        agent: str,
        settings: BatchSettings,
        deliveries: DeliveryLog | None = None,
    ) -> None:
        self.site = site
        self.agent = agent
        self.settings = settings
        # shared with the buffer: the records already durable
        self._deliveries = DeliveryLog() if deliveries is None else deliveries
        self.copies = ExactCopies(
            per_series=_COPIES_PER_SERIES, silent_s=settings.forget_series_after_s
        )
        self._open: _Open | None = None

    def reconfigure(self, settings: BatchSettings) -> None:
        """New limits: the open batch is due by them from now on."""
        self.settings = settings
        self.copies.silent_s = settings.forget_series_after_s

    def _current(self) -> _Open:
        if self._open is None:
            self._open = _Open(codec.ColumnBuilder(self.site, self.agent), time.monotonic())
        return self._open

    def redelivered(
        self, source: str, packet_id: int, dup: bool, digest: bytes, connection: int = 0
    ) -> bool:
        """True if the message is a proven copy of one already taken: drop it, but still
        acknowledge it with this batch (`add_ack`). Otherwise it is recorded in this batch."""
        cur = self._current()
        deliveries = self._deliveries
        if deliveries.redelivered(source, packet_id, dup, digest, cur.deliveries, connection):
            cur.redelivered += 1
            return True
        return False

    def forget_source(self, source: str) -> None:
        """The broker lost `source`'s session: what this batch recorded of it is void."""
        if self._open is not None:
            self._open.deliveries.drop_source(source)

    def add_one(self, r: Reading, original_time_ns: int | None = None) -> bool:
        """Add one reading; False if it was dropped as an exact copy of a recent one."""
        cur = self._current()
        if r.seq != NO_SEQ:
            key = f"{r.site}/{r.device}/{r.metric}"
            # the time as sent: validation may have replaced it with the time of receipt
            sent = r.time_ns if original_time_ns is None else original_time_ns
            if not self.copies.fresh(key, r.seq, sent, r.value, time.monotonic()):
                cur.duplicates += 1
                return False
        cur.builder.add(
            r.device, r.metric, r.unit, r.value, r.time_ns, r.seq, r.flags, original_time_ns
        )
        cur.approx_bytes += _BYTES_PER_READING
        return True

    def add_series(self, cols: SeriesColumns, check: SeriesCheck) -> int:
        """Add a validated column of one series; return how many were exact copies."""
        cur = self._current()
        accepted = check.accepted
        seq, value, times = cols.seq[accepted], cols.value[accepted], check.time_ns
        sent = times.tolist()  # as sent: validation may have replaced some
        for row, t in check.original_time_ns.items():
            sent[row] = t
        key = f"{cols.site}/{cols.device}/{cols.metric}"
        fresh = self.copies.fresh_many(key, seq.tolist(), sent, value.tolist(), time.monotonic())
        keep = np.array(fresh, dtype=np.bool_)
        dups = int(keep.size - np.count_nonzero(keep))
        original = check.original_time_ns
        flags = check.flags
        if dups:
            kept_row = np.cumsum(keep) - 1
            original = {int(kept_row[r]): t for r, t in original.items() if keep[r]}
            seq, value, times, flags = seq[keep], value[keep], times[keep], flags[keep]
        cur.builder.extend(
            (cols.device, cols.metric, check.unit), times, value, seq, flags, original
        )
        cur.approx_bytes += _BYTES_PER_READING * int(seq.size)
        cur.duplicates += dups
        return dups

    def add_ack(self, ack: Any) -> None:
        """Acknowledge this source message once the current batch is durable."""
        if ack is not None:
            self._current().acks.append(ack)

    def add_dead_letter(self, letter: DeadLetter, ack: Any = None) -> None:
        cur = self._current()
        cur.dead_letters.append(letter)
        cur.approx_bytes += len(letter.payload)
        if ack is not None:
            cur.acks.append(ack)

    def pending_readings(self) -> int:
        return len(self._open.builder) if self._open else 0

    def full(self) -> bool:
        cur = self._open
        return cur is not None and (
            len(cur.builder) >= self.settings.max_readings
            or cur.approx_bytes >= self.settings.max_bytes
        )

    def seconds_until_due(self) -> float | None:
        """None when nothing is open; else seconds until the linger time is up (may be <= 0)."""
        if self._open is None:
            return None
        return self._open.started + self.settings.linger_ms / 1000 - time.monotonic()

    def take(self, batch_id: str) -> Flush | None:
        cur, self._open = self._open, None
        if cur is None:
            return None
        batch = None
        if len(cur.builder):
            cur.builder.batch_id = batch_id
            built = cur.builder.build()
            if self.settings.encoding == "senml":
                batch = PendingBatch(
                    codec.SENML_CONTENT_TYPE, len(built), codec.encode_senml(built)
                )
            else:
                batch = PendingBatch(codec.CONTENT_TYPE, len(built), codec.encode(built))
        self.copies.prune(time.monotonic())
        return Flush(
            batch, cur.dead_letters, cur.deliveries, cur.acks, cur.redelivered, cur.duplicates
        )

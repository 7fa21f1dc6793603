"""Forms batches: readings go straight into column arrays; a batch is due on max readings,
max bytes or linger time (monotonic clock). Also drops redelivered readings by the
sequence numbers seen in each series (site, device, metric; edge/dedupe.py: a high-water
mark plus the seqs a jump skipped, so late deliveries are kept), made durable together
with the batch. Readings without a sequence number (`NO_SEQ`) are never dropped.

Keyed per series, not per device: a device may number its readings across metrics (the
simulator does) or give every metric of one sample the same number (line protocol with
a `seq` field); either way each series' numbers increase."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.buffer import DeadLetter, PendingBatch
from edge.decoders.context import NO_SEQ, SeriesColumns
from edge.dedupe import SeqFilter
from edge.validation import SeriesCheck
from gateway import codec
from gateway.config import BatchSettings
from gateway.reading import Reading

_BYTES_PER_READING = 30  # the fixed-width columns of one reading on the wire


@dataclass(slots=True)
class Flush:
    """What one flush makes durable, and the source messages to acknowledge after."""

    batch: PendingBatch | None
    dead_letters: list[DeadLetter]
    high_water: dict[str, int]
    acks: list[Any]
    duplicates: int
    holes: dict[str, set[int]] = field(default_factory=dict)


@dataclass(slots=True)
class _Open:
    builder: codec.ColumnBuilder
    started: float
    dead_letters: list[DeadLetter] = field(default_factory=list)
    high_water: dict[str, int] = field(default_factory=dict)
    holes: dict[str, set[int]] = field(default_factory=dict)
    acks: list[Any] = field(default_factory=list)
    duplicates: int = 0
    approx_bytes: int = 0


class Batcher:
    def __init__(
        self,
        site: str,
        agent: str,
        settings: BatchSettings,
        high_water: dict[str, int],
        holes: dict[str, set[int]] | None = None,
    ) -> None:
        self.site = site
        self.agent = agent
        self.settings = settings
        # shared with the buffer: what is already durable
        self._seqs = SeqFilter(high_water, {} if holes is None else holes)
        self._open: _Open | None = None

    def reconfigure(self, settings: BatchSettings) -> None:
        """New limits: the open batch is due by them from now on."""
        self.settings = settings

    def _current(self) -> _Open:
        if self._open is None:
            self._open = _Open(codec.ColumnBuilder(self.site, self.agent), time.monotonic())
        return self._open

    def add_one(self, r: Reading, original_time_ns: int | None = None) -> bool:
        """Add one reading; False if it was dropped as already seen (redelivered)."""
        cur = self._current()
        if r.seq != NO_SEQ:
            key = f"{r.site}/{r.device}/{r.metric}"
            if not self._seqs.accept(key, r.seq, cur.high_water, cur.holes):
                cur.duplicates += 1
                return False
        cur.builder.add(
            r.device, r.metric, r.unit, r.value, r.time_ns, r.seq, r.flags, original_time_ns
        )
        cur.approx_bytes += _BYTES_PER_READING
        return True

    def add_series(
        self,
        cols: SeriesColumns,
        check: SeriesCheck,
    ) -> int:
        """Add a validated column of one series; return how many were redelivered copies.

        The same rule as `add_one`, vectorised for the usual run of seqs one stride apart
        (edge/dedupe.py)."""
        cur = self._current()
        seq = cols.seq[check.accepted]
        keep: slice | npt.NDArray[np.bool_] = slice(None)
        dups = 0
        numbered = seq != NO_SEQ
        if numbered.any():
            key = f"{cols.site}/{cols.device}/{cols.metric}"
            fresh = np.ones(seq.shape, dtype=np.bool_)
            fresh[numbered] = self._seqs.accept_run(key, seq[numbered], cur.high_water, cur.holes)
            dups = int(fresh.size - np.count_nonzero(fresh))
            if dups:
                keep = fresh
        original = check.original_time_ns
        if dups and original:
            kept_row = np.cumsum(fresh) - 1
            original = {int(kept_row[r]): t for r, t in original.items() if fresh[r]}
        cur.builder.extend(
            (cols.device, cols.metric, check.unit),
            check.time_ns[keep],
            cols.value[check.accepted][keep],
            seq[keep],
            check.flags[keep],
            original,
        )
        added = int(seq.size) - dups
        cur.approx_bytes += _BYTES_PER_READING * added
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
        return Flush(batch, cur.dead_letters, cur.high_water, cur.acks, cur.duplicates, cur.holes)

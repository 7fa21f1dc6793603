"""Forms batches: readings go straight into column arrays; a batch is due on max readings,
max bytes or linger time (monotonic clock). Also drops redelivered readings by the
per-device sequence numbers seen (edge/dedupe.py), made durable together with the batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from edge.buffer import DeadLetter, PendingBatch
from edge.dedupe import SeqFilter
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

    def _current(self) -> _Open:
        if self._open is None:
            self._open = _Open(codec.ColumnBuilder(self.site, self.agent), time.monotonic())
        return self._open

    def add(self, readings: list[Reading], ack: Any = None) -> int:
        """Add one source message's readings; return how many were dropped as redelivered."""
        cur = self._current()
        dups = 0
        for r in readings:
            key = f"{r.site}/{r.device}"
            if not self._seqs.accept(key, r.seq, cur.high_water, cur.holes):
                dups += 1
                continue
            cur.builder.add_reading(r)
            cur.approx_bytes += _BYTES_PER_READING
        cur.duplicates += dups
        if ack is not None:
            cur.acks.append(ack)
        return dups

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
            payload = codec.encode(cur.builder.build())
            batch = PendingBatch(codec.CONTENT_TYPE, len(cur.builder), payload)
        return Flush(batch, cur.dead_letters, cur.high_water, cur.acks, cur.duplicates, cur.holes)

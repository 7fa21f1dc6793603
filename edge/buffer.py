"""The durable store-and-forward buffer: SQLite in WAL mode.

Order of durable steps (the guarantee chain, DESIGN.md):
  1. `commit()` writes, in ONE transaction, the encoded batch, the dead letters of the same
     flush, and the per-device high-water sequence numbers.
  2. Only after that commit does the agent acknowledge the MQTT messages to the broker.
  3. The uplink publishes a batch with its stable `batch_id` as `Nats-Msg-Id`.
  4. Only after JetStream's PubAck does `delete_batches()` remove it.
A crash between any two steps repeats the earlier step, and each repeat is recognised:
the broker redelivers (2) and the high-water mark drops the copy; JetStream deduplicates (3).

A file that SQLite reports as corrupt at start is moved aside and a fresh buffer is used:
the agent never refuses to start over its buffer.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edge.errors import BufferError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches(
    id INTEGER PRIMARY KEY,
    batch_id TEXT NOT NULL UNIQUE,
    content_type TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters(
    id INTEGER PRIMARY KEY,
    created_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS high_water(device TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class StoredBatch:
    row: int
    batch_id: str
    content_type: str
    created_ns: int
    readings: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source: str
    reason: str
    detail: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    row: int
    created_ns: int
    letter: DeadLetter


@dataclass(frozen=True, slots=True)
class BufferStats:
    batches: int
    readings: int
    bytes: int
    dead_letters: int
    oldest_created_ns: int | None


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A batch formed by the batcher, not yet durable."""

    content_type: str
    readings: int
    payload: bytes


class SqliteBuffer:
    """Bounded, crash-safe batch store. Construct, then `open()`; single writer."""

    def __init__(self, path: Path, *, max_bytes: int, durability: str = "normal") -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.durability = durability
        self.instance = ""
        self.high_water: dict[str, int] = {}
        self._db: sqlite3.Connection | None = None
        self._next_batch = 0
        self._bytes = 0

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open_checked()
        except sqlite3.DatabaseError as exc:
            moved = self._move_aside()
            log.error(
                "buffer %s is corrupt (%s); moved it to %s and started a fresh one",
                self.path,
                exc,
                moved,
            )
            self._open_checked()

    def _open_checked(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.durability.upper()}")
            db.executescript(_SCHEMA)
            self._db = db
            self._load_state()
        except sqlite3.DatabaseError:
            db.close()
            self._db = None
            raise

    def _load_state(self) -> None:
        db = self._conn
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if "instance" not in meta:
            meta["instance"] = uuid.uuid4().hex[:12]
            db.execute("INSERT INTO meta VALUES ('instance', ?)", (meta["instance"],))
        self.instance = meta["instance"]
        self._next_batch = int(meta.get("next_batch", "1"))
        self.high_water = dict(db.execute("SELECT device, seq FROM high_water").fetchall())
        self._bytes = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM batches").fetchone()[0]

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(target) + suffix))
        return target

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise BufferError("buffer is not open")
        return self._db

    # -- writing ---------------------------------------------------------------------------
    def next_batch_id(self, agent: str) -> str:
        """The stable id the next committed batch will carry (also its Nats-Msg-Id)."""
        return f"{agent}:{self.instance}:{self._next_batch}"

    def commit(
        self,
        batch: PendingBatch | None,
        batch_id: str,
        dead_letters: Iterable[DeadLetter],
        high_water: Mapping[str, int],
        counters: Mapping[str, int] | None = None,
    ) -> None:
        """Make a flush durable in one transaction (step 1 of the guarantee chain)."""
        db = self._conn
        now = time.time_ns()
        try:
            db.execute("BEGIN IMMEDIATE")
            dropped_bytes, dropped_readings = (0, 0)
            if batch is not None:
                dropped_bytes, dropped_readings = self._drop_oldest_for(len(batch.payload))
                db.execute(
                    "INSERT INTO batches(batch_id, content_type, created_ns, readings, bytes,"
                    " payload) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        batch_id,
                        batch.content_type,
                        now,
                        batch.readings,
                        len(batch.payload),
                        batch.payload,
                    ),
                )
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('next_batch', ?)",
                    (str(self._next_batch + 1),),
                )
            db.executemany(
                "INSERT INTO dead_letters(created_ns, source, reason, detail, payload)"
                " VALUES (?, ?, ?, ?, ?)",
                [(now, d.source, d.reason, d.detail, d.payload) for d in dead_letters],
            )
            db.executemany(
                "INSERT OR REPLACE INTO high_water VALUES (?, ?)", list(high_water.items())
            )
            counters = dict(counters or {})
            if dropped_readings:
                counters["dropped_overflow"] = (
                    counters.get("dropped_overflow", 0) + dropped_readings
                )
                log.warning(
                    "buffer full (%d bytes): dropped %d oldest readings",
                    self.max_bytes,
                    dropped_readings,
                )
            for name, delta in counters.items():
                db.execute(
                    "INSERT INTO counters VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (name, delta),
                )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise BufferError(f"cannot write to buffer {self.path}: {exc}") from exc
        if batch is not None:
            self._next_batch += 1
            self._bytes += len(batch.payload) - dropped_bytes
        self.high_water.update(high_water)

    def _drop_oldest_for(self, incoming: int) -> tuple[int, int]:
        """Overflow policy drop_oldest: delete the oldest batches until `incoming` fits."""
        db = self._conn
        freed = dropped = 0
        while self._bytes - freed + incoming > self.max_bytes:
            row = db.execute(
                "DELETE FROM batches WHERE id = (SELECT MIN(id) FROM batches)"
                " RETURNING bytes, readings"
            ).fetchone()
            if row is None:
                break
            freed += row[0]
            dropped += row[1]
        return freed, dropped

    # -- reading and deleting --------------------------------------------------------------
    def oldest_batches(self, limit: int, after_row: int = 0) -> list[StoredBatch]:
        rows = self._conn.execute(
            "SELECT id, batch_id, content_type, created_ns, readings, payload FROM batches"
            " WHERE id > ? ORDER BY id LIMIT ?",
            (after_row, limit),
        ).fetchall()
        return [StoredBatch(*r) for r in rows]

    def delete_batches(self, rows: Iterable[int]) -> None:
        """Remove published batches (step 4: only after their PubAck)."""
        ids = [(r,) for r in rows]
        if not ids:
            return
        db = self._conn
        freed = 0
        db.execute("BEGIN IMMEDIATE")
        for (row,) in ids:
            got = db.execute("DELETE FROM batches WHERE id = ? RETURNING bytes", (row,)).fetchone()
            freed += got[0] if got else 0
        db.execute("COMMIT")
        self._bytes -= freed

    def oldest_dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        rows = self._conn.execute(
            "SELECT id, created_ns, source, reason, detail, payload FROM dead_letters"
            " ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [StoredDeadLetter(r[0], r[1], DeadLetter(*r[2:])) for r in rows]

    def delete_dead_letters(self, rows: Iterable[int]) -> None:
        self._conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(r,) for r in rows])

    def counters(self) -> dict[str, int]:
        return dict(self._conn.execute("SELECT name, value FROM counters").fetchall())

    def stats(self) -> BufferStats:
        db = self._conn
        n, readings, size, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(readings), 0), COALESCE(SUM(bytes), 0),"
            " MIN(created_ns) FROM batches"
        ).fetchone()
        dead = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        return BufferStats(n, readings, size, dead, oldest)

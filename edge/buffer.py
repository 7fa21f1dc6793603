"""The durable store-and-forward buffer: SQLite in WAL mode.

Order of durable steps (the guarantee chain, docs/architecture.md):
  1. `commit()` writes, in ONE transaction, the encoded batch, the dead letters of the same
     flush, the delivery records of its MQTT messages (source, packet id, digest:
     edge/dedupe.py) and the accounting counters.
  2. Only after that commit does the agent acknowledge the MQTT messages to the broker.
  3. Before publishing, the uplink marks the batches `attempted` (`mark_attempted`), so a
     restarted agent knows which batches the stream may already hold.
  4. The uplink publishes a batch with its stable `batch_id` as `Nats-Msg-Id`.
  5. Only after JetStream's PubAck does `delete_batches()` remove it (and count it as
     published, in the same transaction).
A crash between any two steps repeats the earlier step, and each repeat is recognised:
the broker redelivers (2) with DUP set and the same packet id, and the delivery records
prove it a copy, which is acknowledged and dropped (edge/dedupe.py);
JetStream deduplicates (4) within its duplicate window, and beyond it the uplink asks the
stream which attempted batches it already holds (edge/uplink.py).

Disk writes (SD cards wear out): payloads are stored LZ4-compressed (fast both ways, so
the backlog still drains at network speed), attempt marks live in their own small table,
and freed pages are not zeroed (`secure_delete=OFF`; some SQLite builds default to ON,
which doubles the bytes written). WAL writes each page twice (log, then checkpoint):
bench/drain.py measures the total per reading.

Bounds: `max_bytes` of stored (compressed) payload and `max_age_s`. What does not fit
follows `overflow`: `drop_oldest` deletes the oldest batches, `drop_newest` refuses the
incoming one, `block` raises `BufferFull` so the agent holds the flush and stops
acknowledging. A full disk (SQLITE_FULL) is handled by the same policy. Every dropped
reading is counted by source and reason in the same transaction (edge/accounting.py).

Encryption at rest (off by default): with `encryption_key_file`, batch and dead-letter
payloads are sealed with AES-GCM before they are written (edge/buffer_cipher.py); a row
that fails authentication when read is quarantined (`dropped: tampered`), never fatal.

A file that SQLite reports as corrupt at start is moved aside, what can still be read from
it is copied into a fresh buffer, and the agent carries on: it never refuses to start.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import struct
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import lz4.block
import orjson

from edge import buffer_cipher, compaction
from edge.buffer_cipher import BufferCipher
from edge.dedupe import DeliveryLog, PendingDeliveries, Record
from edge.errors import BufferFull, BufferKeyError, BufferStoreError, TamperedError
from gateway.config import BufferSettings

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
    payload BLOB NOT NULL,
    sources TEXT NOT NULL DEFAULT '{}',
    compressed INTEGER NOT NULL DEFAULT 0
);
-- Kept apart from the batches: marking a window attempted then writes one small page,
-- not the leaf page of every batch (which holds the start of its payload).
CREATE TABLE IF NOT EXISTS attempted(id INTEGER PRIMARY KEY, at_ns INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS batch_gone AFTER DELETE ON batches
    BEGIN DELETE FROM attempted WHERE id = old.id; END;
CREATE TABLE IF NOT EXISTS dead_letters(
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids name dead letters (Nats-Msg-Id): never reused
    created_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL,
    encrypted INTEGER NOT NULL DEFAULT 0
);
-- The MQTT messages each commit made durable: what proves a redelivery a copy
-- (edge/dedupe.py). One row per source and commit, its records packed (`_pack`): an
-- append of a few bytes per message, where a row per message cost about 2.5x the bytes
-- written (bench/deliveries.py). Later rows override earlier ones; pruned by ordinal.
CREATE TABLE IF NOT EXISTS delivery_runs(
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    next_ordinal INTEGER NOT NULL,
    records BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_TABLES = (
    "meta",
    "batches",
    "attempted",
    "dead_letters",
    "delivery_runs",
    "counters",
)
UNKNOWN_SOURCE = "-"
_RESERVE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class StoredBatch:
    row: int
    batch_id: str
    content_type: str
    created_ns: int
    readings: int
    payload: bytes
    attempted_ns: int | None
    stored_bytes: int  # as stored (compressed): what deleting it frees
    sources: str  # JSON {source: readings}, for the accounting when it is deleted


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


@dataclass(slots=True)
class SourceCounts:
    """Per source: readings in the flushed batch, readings dropped as exact copies a device
    sent twice, and redelivered messages dropped (not received again: the same message,
    counted when it was first received)."""

    readings: Counter[str] = field(default_factory=Counter)
    redelivered: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class CommitResult:
    stored: bool = False
    dropped: Counter[str] = field(default_factory=Counter)  # readings, by reason


@dataclass(frozen=True, slots=True)
class _Commit:
    """Everything one flush makes durable."""

    batch: PendingBatch | None
    batch_id: str
    letters: list[DeadLetter]
    deliveries: PendingDeliveries
    floors: dict[str, int]  # per source: records below this ordinal are pruned
    intake: SourceCounts


def counter_name(kind: str, source: str, reason: str = "") -> str:
    return f"{kind}:{source}:{reason}" if reason else f"{kind}:{source}"


class SqliteBuffer:
    """Bounded, crash-safe batch store. Construct, then `open()`; single writer."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        durability: str = "normal",
        overflow: str = "drop_oldest",
        max_age_s: float = 0.0,
        key_file: Path | None = None,
    ) -> None:
        if overflow not in ("drop_oldest", "drop_newest", "block", "downsample"):
            raise ValueError(
                f"overflow must be drop_oldest, drop_newest, block or downsample, not {overflow!r}"
            )
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be normal or full, not {durability!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.durability = durability
        self.overflow = overflow
        self._disk_full = False  # in a disk-full episode: logged once, at its start
        self.max_age_ns = int(max_age_s * 1e9)
        self.key_file = key_file  # read at open(): payloads are sealed with its key
        self._cipher: BufferCipher | None = None
        self.instance = ""
        # delivery records (edge/dedupe.py), shared with the batcher's DeliveryLog
        self.deliveries = DeliveryLog()
        self._db: sqlite3.Connection | None = None
        self._next_batch = 0
        self._bytes = 0
        # Rows the uplink has read in its current round: never compacted (edge/compaction.py)
        self._read_floor = 0

    @classmethod
    def from_settings(cls, path: Path, settings: BufferSettings) -> SqliteBuffer:
        return cls(
            path,
            max_bytes=settings.max_bytes,
            durability=settings.durability,
            overflow=settings.overflow,
            max_age_s=settings.max_age_s,
            key_file=settings.encryption_key_file,
        )

    def reconfigure(self, settings: BufferSettings) -> None:
        """Take new bounds and overflow policy in place (the store stays open); they apply
        from the next commit. `durability` is fixed at construction (restart-only)."""
        self.max_bytes = settings.max_bytes
        self.max_age_ns = int(settings.max_age_s * 1e9)
        self.overflow = settings.overflow

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        if self.key_file is not None:
            self._cipher = BufferCipher.from_key_file(self.key_file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keep_reserve()
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
            self._salvage(moved)

    def _open_checked(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.durability.upper()}")
            db.execute("PRAGMA secure_delete=OFF")
            db.executescript(_SCHEMA)
            self._migrate(db)
            buffer_cipher.check_store(db, self._cipher, self.path)
            self._db = db
            self._load_state()
        except (sqlite3.DatabaseError, BufferKeyError):
            db.close()
            self._db = None
            raise

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Add the columns a buffer written by an older version lacks (never drops data)."""
        have = {r[1] for r in db.execute("PRAGMA table_info(batches)")}
        if "sources" not in have:
            db.execute("ALTER TABLE batches ADD COLUMN sources TEXT NOT NULL DEFAULT '{}'")
        if "compressed" not in have:
            db.execute("ALTER TABLE batches ADD COLUMN compressed INTEGER NOT NULL DEFAULT 0")
        if "encrypted" not in {r[1] for r in db.execute("PRAGMA table_info(dead_letters)")}:
            db.execute("ALTER TABLE dead_letters ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 0")
        # The seq high-water marks of earlier versions are not evidence of anything.
        db.execute("DROP TABLE IF EXISTS high_water")

    def _load_state(self) -> None:
        db = self._conn
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if "instance" not in meta:
            meta["instance"] = uuid.uuid4().hex[:12]
            db.execute("INSERT INTO meta VALUES ('instance', ?)", (meta["instance"],))
        self.instance = meta["instance"]
        # A batch's row is its batch number (see _insert_batch); a file whose meta was lost
        # (salvage) must still never hand out a row it holds.
        top = db.execute("SELECT COALESCE(MAX(id), 0) FROM batches").fetchone()[0]
        self._next_batch = max(int(meta.get("next_batch", "1")), top + 1)
        deliveries = self.deliveries
        deliveries.clear()
        for source, next_ordinal, packed in db.execute(
            "SELECT source, next_ordinal, records FROM delivery_runs ORDER BY id"
        ):
            deliveries.ordinals[source] = next_ordinal
            deliveries.load(_unpack(source, bytes(packed)))
        self._bytes = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM batches").fetchone()[0]

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(target) + suffix))
        return target

    def _salvage(self, moved: Path) -> None:
        """Copy every table that can still be read from the corrupt file into the fresh one.

        Batches keep their ids, so the uplink's duplicate checks still recognise them; the
        instance id is kept too, so new batch ids never collide with salvaged ones."""
        db = self._conn
        try:
            db.execute("ATTACH DATABASE ? AS old", (str(moved),))
        except sqlite3.DatabaseError as exc:
            log.error("nothing could be salvaged from %s: %s", moved, exc)
            return
        saved: dict[str, int] = {}
        for table in _TABLES:
            try:
                db.execute("BEGIN IMMEDIATE")
                cols = ", ".join(r[1] for r in db.execute(f"PRAGMA old.table_info({table})"))
                if table == "meta":
                    db.execute("DELETE FROM meta")
                cur = db.execute(
                    f"INSERT OR REPLACE INTO {table}({cols}) SELECT {cols} FROM old.{table}"
                )
                db.execute("COMMIT")
                saved[table] = cur.rowcount
            except sqlite3.DatabaseError as exc:
                db.execute("ROLLBACK")
                log.error("could not salvage table %s from %s: %s", table, moved, exc)
        db.execute("DETACH DATABASE old")
        log.warning("salvaged from %s: %s", moved, saved)
        self._load_state()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (or cancellation)."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _uplink_write(self) -> Iterator[sqlite3.Connection]:
        """A transaction of the uplink's (attempt marks, deletes). On a full disk even a
        DELETE needs WAL pages: the reserve is given up so that the retry fits, and the
        buffer's own error is raised; the uplink retries (a batch not deleted is resent
        under its id, which JetStream deduplicates)."""
        try:
            with self._transaction() as db:
                yield db
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                self._reserve.unlink(missing_ok=True)
                self._shrink_wal()
            raise BufferStoreError(f"cannot write to buffer {self.path}: {exc}") from exc

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise BufferStoreError("buffer is not open")
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
        deliveries: PendingDeliveries | None = None,
        intake: SourceCounts | None = None,
    ) -> CommitResult:
        """Make a flush durable in one transaction (step 1 of the guarantee chain).

        Raises `BufferFull` under the `block` policy when the batch does not fit, and
        `BufferStoreError` when the disk refuses even the small bookkeeping write."""
        if intake is None:  # callers that do not track sources
            intake = SourceCounts(Counter({UNKNOWN_SOURCE: batch.readings if batch else 0}))
        deliveries = deliveries or PendingDeliveries()
        floors = self.deliveries.floors(deliveries)
        flush = _Commit(batch, batch_id, list(dead_letters), deliveries, floors, intake)
        try:
            result = self._commit_once(flush, None)
            if self._disk_full:
                self._disk_full = False
                log.info("buffer %s: writes fit on the disk again", self.path)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise BufferStoreError(f"cannot write to buffer {self.path}: {exc}") from exc
            # once per episode: a disk full for an hour must not also fill the log
            log.log(
                logging.DEBUG if self._disk_full else logging.ERROR,
                "disk full writing the buffer %s; applying the %s policy",
                self.path,
                self.overflow,
            )
            self._disk_full = True
            try:  # even freeing space needs WAL pages: a refusal here is the buffer's error
                result = self._commit_disk_full(flush)
            except sqlite3.Error as full:
                raise BufferStoreError(f"disk full: cannot write to {self.path}") from full
        except sqlite3.Error as exc:
            raise BufferStoreError(f"cannot write to buffer {self.path}: {exc}") from exc
        self.deliveries.apply(deliveries, floors)
        self._keep_reserve()
        return result

    def forget_deliveries(self, source: str) -> None:
        """The broker holds no session for `source` any more: drop its delivery records
        now, durably, before any message of the new session is handled (edge/dedupe.py)."""
        try:
            with self._transaction() as db:
                db.execute("DELETE FROM delivery_runs WHERE source = ?", (source,))
        except sqlite3.Error as exc:
            raise BufferStoreError(f"cannot write to buffer {self.path}: {exc}") from exc
        self.deliveries.forget(source)

    @property
    def _reserve(self) -> Path:
        return self.path.with_name(self.path.name + ".reserve")

    def _keep_reserve(self) -> None:
        """Headroom: a file of `_RESERVE_BYTES` next to the buffer, given up when the disk
        is full so that the drops and counters of that moment can still commit (even a
        DELETE needs WAL pages), and taken back once there is space again."""
        if self._reserve.exists():
            return
        try:
            self._reserve.write_bytes(bytes(_RESERVE_BYTES))
        except OSError:  # no space yet: try again after a later commit
            self._reserve.unlink(missing_ok=True)

    def _shrink_wal(self) -> None:
        """Give the WAL's disk space back (its pages into the database, the file cut to
        nothing): a WAL that grew while a reader (`gateway edge stats`) held back its
        checkpoints can be what fills the disk, and then even deletes cannot commit."""
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _commit_disk_full(self, flush: _Commit) -> CommitResult:
        if self.overflow == "block":
            raise BufferFull(f"disk full at {self.path}")
        self._reserve.unlink(missing_ok=True)
        if self.overflow in ("drop_oldest", "downsample"):  # compacting needs pages too
            while self._drop_oldest_batch_alone():
                try:
                    return self._commit_once(flush, None)
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                        raise BufferStoreError(
                            f"cannot write to buffer {self.path}: {exc}"
                        ) from exc
        try:  # nothing left to drop, or drop_newest: keep only the bookkeeping
            return self._commit_once(flush, "disk_full")
        except sqlite3.Error as exc:
            raise BufferStoreError(
                f"disk full: cannot write even bookkeeping to {self.path}"
            ) from exc

    def _commit_once(self, flush: _Commit, refuse: str | None) -> CommitResult:
        """One transaction. `refuse` names the reason the batch is dropped instead of stored."""
        db = self._conn
        now = time.time_ns()
        result = CommitResult()
        counters: Counter[str] = Counter()
        batch = flush.batch
        stored = lz4.block.compress(batch.payload) if batch is not None else b""
        if self._cipher is not None and batch is not None:
            stored = self._cipher.seal(stored, buffer_cipher.batch_aad(flush.batch_id))
        freed = 0
        with self._transaction():
            freed += self._expire(now, counters, result)
            if batch is not None and refuse is None:
                refuse, dropped_bytes = self._make_room(len(stored), freed, counters, result)
                freed += dropped_bytes
            if batch is not None:
                if refuse is None:
                    self._insert_batch(batch, stored, flush.batch_id, now, flush.intake)
                    result.stored = True
                else:
                    self._count_dropped(flush.intake.readings, refuse, counters, result)
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('next_batch', ?)",
                    (str(self._next_batch + 1),),
                )
            self._insert_letters(flush.letters, now, counters)
            self._count_intake(flush.intake, counters)
            self._write_deliveries(flush)
            self._add_counters(counters)
        if batch is not None:
            self._next_batch += 1
        # Also without a batch (a flush of dead letters only): its expiry freed room too.
        self._bytes += (len(stored) if result.stored else 0) - freed
        if result.dropped:
            log.warning("buffer dropped readings: %s", dict(result.dropped))
        return result

    def _write_deliveries(self, flush: _Commit) -> None:
        db = self._conn
        pending = flush.deliveries
        if not pending.records:
            return
        by_source: dict[str, list[tuple[int, Record]]] = {}
        for (source, pid), rec in pending.records.items():
            by_source.setdefault(source, []).append((pid, rec))
        db.executemany(
            "INSERT INTO delivery_runs(source, next_ordinal, records) VALUES (?, ?, ?)",
            [(src, pending.ordinals[src], _pack(recs)) for src, recs in by_source.items()],
        )
        for source, floor in flush.floors.items():  # runs whose every record is too old
            db.execute(
                "DELETE FROM delivery_runs WHERE source = ? AND next_ordinal <= ?",
                (source, floor),
            )

    def _make_room(
        self, size: int, expired: int, counters: Counter[str], result: CommitResult
    ) -> tuple[str | None, int]:
        """Apply the overflow policy for an incoming batch of `size` bytes. `expired`: bytes
        this transaction already freed, not yet subtracted from `_bytes` (it may roll back);
        without it a flush that expires old batches also drops, refuses or blocks the new
        one as if they still took room."""
        used = self._bytes - expired
        if used + size <= self.max_bytes:
            return None, 0
        if self.overflow == "block":
            raise BufferFull(f"buffer full ({used} of {self.max_bytes} bytes)")
        if self.overflow == "drop_newest" or size > self.max_bytes:
            return "overflow", 0
        freed = 0
        if self.overflow == "downsample":  # then drop only what could not be compacted
            freed = self._compact(used + size - self.max_bytes, counters)
        while used - freed + size > self.max_bytes:
            got = self._drop_oldest_row("overflow", counters, result)
            if got is None:
                break
            freed += got
        return None, freed

    def _compact(self, need: int, counters: Counter[str]) -> int:
        done = compaction.make_room(
            self._conn,
            need,
            floor_row=self._read_floor,
            instance=self.instance,
            open_payload=lambda stored, flags, batch_id: buffer_cipher.batch_payload(
                stored, flags, batch_id, self._cipher
            ),
            seal=self._seal_batch,
        )
        for source, n in (done.summarised or {}).items():
            counters[counter_name("summarised", source)] += n
        if done.summaries:
            log.warning("buffer full: compacted the oldest backlog, %d bytes freed", done.freed)
        return done.freed

    def _seal_batch(self, payload: bytes, batch_id: str) -> tuple[bytes, int]:
        stored = lz4.block.compress(payload)
        if self._cipher is None:
            return stored, buffer_cipher.LZ4
        sealed = self._cipher.seal(stored, buffer_cipher.batch_aad(batch_id))
        return sealed, buffer_cipher.LZ4 | buffer_cipher.ENCRYPTED

    def _drop_oldest_row(
        self, reason: str, counters: Counter[str], result: CommitResult
    ) -> int | None:
        # The oldest batch not yet sent: one sent whose PubAck has not come may already be
        # in the stream, so dropping it would count as lost what the cloud holds (and free
        # nothing there). Only when every batch is in flight does the oldest of them go.
        row = self._conn.execute(
            "DELETE FROM batches WHERE id = COALESCE("
            " (SELECT MIN(id) FROM batches WHERE id NOT IN (SELECT id FROM attempted)),"
            " (SELECT MIN(id) FROM batches)) RETURNING bytes, sources"
        ).fetchone()
        if row is None:
            return None
        self._count_dropped(Counter(orjson.loads(row[1])), reason, counters, result)
        return int(row[0])

    def _drop_oldest_batch_alone(self) -> bool:
        """Disk full under drop_oldest: free the oldest batch in its own transaction."""
        result = CommitResult()
        counters: Counter[str] = Counter()
        with self._transaction():
            freed = self._drop_oldest_row("disk_full", counters, result)
            self._add_counters(counters)
        if freed is None:
            return False
        self._bytes -= freed
        log.debug("disk full: dropped the oldest batch (%d readings)", result.dropped.total())
        return True

    def _expire(self, now: int, counters: Counter[str], result: CommitResult) -> int:
        if not self.max_age_ns:
            return 0
        rows = self._conn.execute(
            "DELETE FROM batches WHERE created_ns < ? RETURNING bytes, sources",
            (now - self.max_age_ns,),
        ).fetchall()
        for _size, sources in rows:
            self._count_dropped(Counter(orjson.loads(sources)), "expired", counters, result)
        return sum(int(r[0]) for r in rows)

    def expire(self) -> int:
        """Drop batches older than `max_age_s` now; return how many readings went."""
        if not self.max_age_ns:
            return 0
        result = CommitResult()
        counters: Counter[str] = Counter()
        with self._transaction():
            freed = self._expire(time.time_ns(), counters, result)
            self._add_counters(counters)
        self._bytes -= freed
        return result.dropped.total()

    def _insert_batch(
        self, batch: PendingBatch, stored: bytes, batch_id: str, now: int, intake: SourceCounts
    ) -> None:
        # The row is the durable batch number, never reused: SQLite's default (MAX(id) + 1)
        # gives a dropped or deleted newest batch's row to the next batch, and then an ack
        # (delete_batches) or attempt mark for the old batch would hit the new one.
        self._conn.execute(
            "INSERT INTO batches(id, batch_id, content_type, created_ns, readings, bytes,"
            " payload, sources, compressed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self._next_batch,
                batch_id,
                batch.content_type,
                now,
                batch.readings,
                len(stored),
                stored,
                orjson.dumps({k: v for k, v in intake.readings.items() if v}),
                buffer_cipher.LZ4 | (buffer_cipher.ENCRYPTED if self._cipher else 0),
            ),
        )

    def _insert_letters(self, letters: list[DeadLetter], now: int, counters: Counter[str]) -> None:
        self._conn.executemany(
            "INSERT INTO dead_letters(created_ns, source, reason, detail, payload, encrypted)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(now, d.source, d.reason, d.detail, *self._seal_letter(d)) for d in letters],
        )
        for d in letters:
            counters[counter_name("received", d.source)] += 1
            counters[counter_name("dead_lettered", d.source)] += 1

    def _seal_letter(self, d: DeadLetter) -> tuple[bytes, int]:
        if self._cipher is None:
            return d.payload, 0
        return self._cipher.seal(
            d.payload, buffer_cipher.letter_aad(d.source, d.reason, d.detail)
        ), 1

    @staticmethod
    def _count_intake(intake: SourceCounts, counters: Counter[str]) -> None:
        for source, n in intake.readings.items():
            counters[counter_name("received", source)] += n
        for source, n in intake.redelivered.items():
            counters[counter_name("redelivered", source)] += n
        for source, n in intake.duplicates.items():
            counters[counter_name("received", source)] += n
            counters[counter_name("dropped", source, "duplicate")] += n

    @staticmethod
    def _count_dropped(
        by_source: Mapping[str, int], reason: str, counters: Counter[str], result: CommitResult
    ) -> None:
        for source, n in by_source.items():
            counters[counter_name("dropped", source, reason)] += n
            result.dropped[reason] += n

    def _add_counters(self, counters: Mapping[str, int]) -> None:
        self._conn.executemany(
            "INSERT INTO counters VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [(k, v) for k, v in counters.items() if v],
        )

    # -- reading, publishing and deleting --------------------------------------------------
    def oldest_batches(
        self, limit: int, after_row: int = 0, max_bytes: int | None = None
    ) -> list[StoredBatch]:
        """Up to `limit` batches after `after_row`, oldest first, payloads decompressed;
        with `max_bytes`, stop before the payloads would pass it (but return at least one).
        Stopping while reading, not after, spares reading what would be dropped."""
        if after_row == 0:  # a new round: nothing read before it is still in flight
            self._read_floor = 0
        cursor = self._conn.execute(
            "SELECT b.id, batch_id, content_type, created_ns, readings, payload, a.at_ns,"
            " bytes, sources, compressed FROM batches AS b LEFT JOIN attempted AS a ON a.id = b.id"
            " WHERE b.id > ? ORDER BY b.id LIMIT ?",
            (after_row, limit),
        )
        out: list[StoredBatch] = []
        tampered: list[StoredBatch] = []
        total = 0
        try:
            for r in cursor:
                try:
                    payload = buffer_cipher.batch_payload(r[5], r[9], r[1], self._cipher)
                except TamperedError:
                    tampered.append(StoredBatch(r[0], r[1], r[2], r[3], r[4], b"", *r[6:9]))
                    continue
                total += len(payload)
                if max_bytes is not None and total > max_bytes and out:
                    break
                out.append(StoredBatch(r[0], r[1], r[2], r[3], r[4], payload, r[6], r[7], r[8]))
        finally:
            cursor.close()
        if out:
            self._read_floor = max(self._read_floor, out[-1].row)
        if tampered:
            lost = self.quarantine_batches(tampered, "tampered")
            why = "failed authentication: dropped as tampered"
            log.error("buffer %s: %d batches (%d readings) %s", self.path, len(tampered), lost, why)
        return out

    def mark_attempted(self, rows: Iterable[int]) -> None:
        """Step 3: remember, durably, that these batches may reach the stream from now on."""
        ids = list(rows)
        if ids:  # one statement (and one implicit transaction) for the whole window
            # Only batches still stored: one a drop policy removed since it was read would
            # leave a mark its trigger can no longer delete.
            with self._uplink_write() as db:
                db.execute(
                    "INSERT OR IGNORE INTO attempted SELECT id, ? FROM batches"
                    f" WHERE id IN ({','.join('?' * len(ids))})",
                    [time.time_ns(), *ids],
                )

    def delete_batches(self, batches: Iterable[StoredBatch]) -> int:
        """Step 5: remove published batches (only after their PubAck); count them published.

        Returns how many readings were deleted. A batch a drop policy removed while it was
        in flight was counted dropped then, and is not counted again. The accounting comes
        from the batches as read: asking SQLite for `sources` (stored after the payload)
        or using RETURNING doubled the cost of the delete (docs/benchmarks.md)."""
        read = {b.row: b for b in batches}
        if not read:
            return 0
        db = self._conn
        rows = list(read)
        marks = ",".join("?" * len(rows))
        freed = readings = 0
        by_sources = Counter[str]()  # a backlog's batches mostly share one `sources` text
        counters: Counter[str] = Counter()
        with self._uplink_write():
            present = db.execute(f"SELECT id FROM batches WHERE id IN ({marks})", rows).fetchall()
            db.execute(f"DELETE FROM batches WHERE id IN ({marks})", rows)
            for (row,) in present:
                b = read[row]
                freed += b.stored_bytes
                readings += b.readings
                by_sources[b.sources] += 1
            for sources, times in by_sources.items():
                for source, n in orjson.loads(sources).items():
                    counters[counter_name("published", source)] += n * times
            self._add_counters(counters)
        self._bytes -= freed
        return readings

    def quarantine_batches(self, batches: Iterable[StoredBatch], reason: str) -> int:
        """Drop batches the cloud refuses for good, counted as `dropped: <reason>` by
        source in the same transaction; returns how many readings went."""
        read = {b.row: b for b in batches}
        if not read:
            return 0
        result = CommitResult()
        counters: Counter[str] = Counter()
        freed = 0
        with self._uplink_write() as db:
            for row, b in read.items():
                gone = db.execute("DELETE FROM batches WHERE id = ? RETURNING bytes", (row,))
                if gone.fetchone() is None:
                    continue  # a drop policy took it meanwhile: counted then
                freed += b.stored_bytes
                self._count_dropped(Counter(orjson.loads(b.sources)), reason, counters, result)
            self._add_counters(counters)
        self._bytes -= freed
        return result.dropped.total()

    def oldest_dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        rows = self._conn.execute(
            "SELECT id, created_ns, source, reason, detail, payload, encrypted FROM dead_letters"
            " ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [StoredDeadLetter(r[0], r[1], self._letter(*r[2:])) for r in rows]

    def _letter(
        self, source: str, reason: str, detail: str, stored: bytes, sealed: int
    ) -> DeadLetter:
        """A stored dead letter; one whose payload fails authentication still goes out,
        without it (it is counted dead-lettered already), saying so in its detail."""
        try:
            payload = buffer_cipher.letter_payload(
                stored, sealed, source, reason, detail, self._cipher
            )
        except TamperedError:
            log.error("buffer %s: a dead letter's payload failed authentication", self.path)
            return DeadLetter(source, reason, f"{detail} (stored payload tampered: withheld)", b"")
        return DeadLetter(source, reason, detail, payload)

    def delete_dead_letters(self, rows: Iterable[int]) -> None:
        with self._uplink_write() as db:
            db.executemany("DELETE FROM dead_letters WHERE id = ?", [(r,) for r in rows])

    # -- inspection ------------------------------------------------------------------------
    @property
    def connection(self) -> sqlite3.Connection:
        """For read-only inspection (edge/accounting.py)."""
        return self._conn

    def has_room(self, size: int) -> bool:
        return self._bytes + size <= self.max_bytes

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


_RECORD = struct.Struct(">HQ8s")  # packet id, ordinal, digest: 18 bytes a message


def _pack(records: list[tuple[int, Record]]) -> bytes:
    return b"".join(_RECORD.pack(pid, r.ordinal, r.digest) for pid, r in records)


def _unpack(source: str, packed: bytes) -> Iterator[tuple[tuple[str, int], Record]]:
    for pid, ordinal, dig in _RECORD.iter_unpack(packed):
        yield (source, pid), Record(dig, ordinal)

"""Stateful property test of the store-and-forward buffer (edge/buffer.py) and its
accounting (edge/accounting.py) against a plain in-memory model.

Random flushes (several sources, duplicates, dead letters, incompressible or repetitive
payloads, some bigger than the whole buffer) go into a small buffer so that every overflow
policy acts often; reads, acknowledgements (also of batches a drop removed meanwhile),
attempt marks, expiry and restarts are interleaved. After every step the buffer must agree
with the model exactly, and the project's guarantees must hold (`guarantees_hold`).
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import lz4.block
import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from edge import accounting
from edge.buffer import DeadLetter, PendingBatch, SourceCounts, SqliteBuffer, StoredBatch
from edge.dedupe import PendingDeliveries, Record, digest
from edge.errors import BufferFull

AGENT = "a1"
SOURCES = ("mqtt0", "mqtt1", "serial0")
MAX_BYTES = 4096  # a few batches: every policy overflows within a handful of commits
MAX_AGE_S = 3600.0  # only batches the test ages on purpose expire: no sleeps, no clock races
POLICIES = ("drop_oldest", "drop_newest", "block")

# Mostly batches of up to a third of the buffer, spread evenly (hypothesis favours small
# integers, which would leave the buffer nearly empty), so several are stored and overflow
# drops some of them; one in eight near MAX_BYTES, where incompressible payloads (grown by
# lz4's framing) straddle "just fits" and "bigger than the whole buffer".
_small = st.tuples(st.sampled_from((0, 400, 800, 1200, 1600)), st.integers(1, 400)).map(sum)
payload_sizes = st.one_of(*[_small] * 7, st.integers(MAX_BYTES - 60, MAX_BYTES + 20))


@dataclass(frozen=True)
class Flush:
    """What the agent hands `commit`; no `parts` is a flush of only dead letters and/or
    redelivered duplicates."""

    parts: dict[str, int]  # readings in the batch, by source
    size: int
    incompressible: bool
    duplicates: dict[str, int]  # redelivered messages dropped, by source
    letter: str | None  # the source of one dead letter

    @property
    def payload(self) -> bytes:
        if self.incompressible:  # seeded: an example replays with the same bytes
            return random.Random(self.size).randbytes(self.size)
        return b"x" * self.size


flushes = st.builds(
    Flush,
    parts=st.dictionaries(st.sampled_from(SOURCES), st.integers(1, 20), max_size=2),
    size=payload_sizes,
    # mostly incompressible, as real batches nearly are; some that lz4 shrinks to a few bytes
    incompressible=st.sampled_from((True, True, True, False)),
    duplicates=st.dictionaries(st.sampled_from(SOURCES), st.integers(1, 5), max_size=2),
    letter=st.none() | st.sampled_from(SOURCES),
)


@dataclass
class ModelBatch:
    batch_id: str
    sources: dict[str, int]
    payload: bytes
    stored_bytes: int
    aged: bool = False
    attempted: bool = False

    @property
    def readings(self) -> int:
        return sum(self.sources.values())


@dataclass
class ModelAccount:
    received: int = 0
    published: int = 0
    dead_lettered: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class BufferMachine(RuleBasedStateMachine):
    policy: ClassVar[str]  # the overflow policy, one subclass each (below)

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="buffer-props-"))
        self.path = self.dir / "buffer.sqlite3"
        self.max_age_s = 0.0
        self.buf: SqliteBuffer | None = None
        self.instance = ""
        # the model
        self.stored: list[ModelBatch] = []  # oldest first
        self.gone: dict[str, str] = {}  # batch_id -> "published" or the drop reason
        self.accounts: dict[str, ModelAccount] = {s: ModelAccount() for s in SOURCES}
        self.dead_letters = 0
        self.records: dict[tuple[str, int], Record] = {}  # delivery records (edge/dedupe.py)
        self.ordinals: dict[str, int] = {}
        self.redelivered: Counter[str] = Counter()
        self.commits = 0
        # what the test has seen
        self.in_flight: dict[str, StoredBatch] = {}  # read, "sent", not yet acknowledged
        self.used_ids: set[str] = set()
        self.row_of: dict[str, int] = {}  # batch_id -> row, for every batch ever read
        self.batch_at: dict[int, str] = {}  # row -> batch_id, over the life of the file

    # -- helpers ---------------------------------------------------------------------------
    @property
    def b(self) -> SqliteBuffer:
        assert self.buf is not None
        return self.buf

    def _open(self) -> None:
        self.buf = SqliteBuffer(
            self.path, max_bytes=MAX_BYTES, overflow=self.policy, max_age_s=self.max_age_s
        )
        self.buf.open()

    def _bytes(self) -> int:
        return sum(m.stored_bytes for m in self.stored)

    def _model(self, batch_id: str) -> ModelBatch | None:
        return next((m for m in self.stored if m.batch_id == batch_id), None)

    def _drop(self, m: ModelBatch, reason: str, dropped: Counter[str]) -> None:
        self.stored.remove(m)
        self.gone[m.batch_id] = reason
        for source, n in m.sources.items():
            self.accounts[source].dropped[reason] += n
        dropped[reason] += m.readings

    def _expirable(self) -> list[ModelBatch]:
        return [m for m in self.stored if m.aged] if self.max_age_s else []

    def _snapshot(self) -> object:
        b = self.b
        rows = [(s.row, s.batch_id, s.attempted_ns, s.created_ns) for s in b.oldest_batches(999)]
        return (b.stats(), b.counters(), b.next_batch_id(AGENT), dict(b.deliveries.records), rows)

    def _check_read(self, got: list[StoredBatch]) -> None:
        """Each batch read is the model's, and rows name batches for the life of the file."""
        rows = [s.row for s in got]
        assert rows == sorted(set(rows)), f"rows not in increasing order: {rows}"
        for s in got:
            m = self._model(s.batch_id)
            assert m is not None, f"{s.batch_id} readable but {self.gone.get(s.batch_id)}"
            assert (s.readings, s.payload, s.stored_bytes) == (
                m.readings,
                m.payload,
                m.stored_bytes,
            )
            assert orjson.loads(s.sources) == m.sources
            assert (s.attempted_ns is not None) == m.attempted, s
            # delete_batches and mark_attempted name batches by row: a row must never
            # name two batches, or an ack for a dropped batch deletes another one.
            assert self.batch_at.setdefault(s.row, s.batch_id) == s.batch_id, (
                f"row {s.row} reused: was {self.batch_at[s.row]}, now {s.batch_id}"
            )
            if s.batch_id not in self.row_of:
                # first seen right after its commit (the invariants read everything), so
                # it is the newest batch: its row must pass every row handed out before,
                # dropped and deleted ones and those of earlier runs included
                assert s.row == max(self.batch_at), (s.row, max(self.batch_at))
                self.row_of[s.batch_id] = s.row

    # -- rules -----------------------------------------------------------------------------
    @initialize(expiring=st.sampled_from((True, True, True, False)))  # max_age 0: no expiry
    def start(self, expiring: bool) -> None:
        self.max_age_s = MAX_AGE_S if expiring else 0.0
        self._open()
        self.instance = self.b.instance

    @rule(flush=flushes)
    def commit(self, flush: Flush) -> None:
        b = self.b
        parts, duplicates = flush.parts, flush.duplicates
        batch_id = b.next_batch_id(AGENT)
        assert batch_id not in self.used_ids, f"batch id {batch_id} reused"
        payload = flush.payload
        batch = PendingBatch("ct", sum(parts.values()), payload) if parts else None
        stored_bytes = len(lz4.block.compress(payload))
        letters = [DeadLetter(flush.letter, "invalid_json", "", b"{")] if flush.letter else []
        self.commits += 1
        pending = PendingDeliveries()  # one MQTT message per source in this flush
        for s in parts:
            ordinal = self.ordinals.get(s, 0)
            content = digest(s, b"%d" % self.commits)
            pending.records[(s, self.commits)] = Record(content, ordinal)
            pending.ordinals[s] = ordinal + 1

        # The model's decision: expiry first, then the policy with the room left after it.
        expiring = self._expirable()
        room = MAX_BYTES - self._bytes() + sum(m.stored_bytes for m in expiring)
        if batch is None or stored_bytes <= room:
            outcome = "store"
        elif self.policy == "block":
            outcome = "block"
        elif self.policy == "drop_newest" or stored_bytes > MAX_BYTES:
            outcome = "refuse"
        else:
            outcome = "make_room"

        before = self._snapshot()
        intake = SourceCounts(Counter(parts), Counter(duplicates))
        try:
            result = b.commit(batch, batch_id, letters, pending, intake)
        except BufferFull:
            assert outcome == "block", f"BufferFull, but the model says {outcome}"
            # the agent holds the flush and retries it: nothing of it may be durable
            assert self._snapshot() == before
            return
        assert outcome != "block", "block policy stored a batch that does not fit"

        dropped: Counter[str] = Counter()
        for m in expiring:
            self._drop(m, "expired", dropped)
        if outcome == "make_room":
            while self._bytes() + stored_bytes > MAX_BYTES:  # batches in flight go last
                waiting = [m for m in self.stored if not m.attempted]
                self._drop((waiting or self.stored)[0], "overflow", dropped)
        # "received" is everything the flush took in: its batch's readings and its dead
        # letters (one each), as _count_intake and _insert_letters count them; a refused
        # batch was received too. A redelivered message is not received again.
        for source, n in parts.items():
            self.accounts[source].received += n
        self.redelivered.update(duplicates)
        for d in letters:
            self.accounts[d.source].received += 1
            self.accounts[d.source].dead_lettered += 1
        self.dead_letters += len(letters)
        self.records.update(pending.records)
        self.ordinals.update(pending.ordinals)
        if batch is not None:
            self.used_ids.add(batch_id)
            if outcome == "refuse":
                self.gone[batch_id] = "overflow"
                for source, n in parts.items():
                    self.accounts[source].dropped["overflow"] += n
                dropped["overflow"] += batch.readings
            else:
                self.stored.append(ModelBatch(batch_id, dict(parts), payload, stored_bytes))
        assert result.stored == (batch is not None and outcome != "refuse")
        assert +result.dropped == +dropped, (result.dropped, dropped)

    @rule(flush=flushes)
    def age_one_then_commit(self, flush: Flush) -> None:
        """The oldest batch passes max_age, then a flush: its own expiry must make room
        while younger batches stay (as separate steps, something else nearly always expires
        it first). A second commit rule also lets the buffer fill up within a few steps."""
        self.age(1)
        self.commit(flush)

    @rule(limit=st.integers(1, 6), from_last=st.booleans(), cap=st.none() | st.integers(1, 5000))
    def read(self, limit: int, from_last: bool, cap: int | None) -> None:
        """The uplink reads a window and sends it: the batches are in flight."""
        after = max((s.row for s in self.in_flight.values()), default=0) if from_last else 0
        got = self.b.oldest_batches(limit, after, max_bytes=cap)
        self._check_read(got)
        # every stored batch's row is known: the invariants read them all after each step
        expect = [m for m in self.stored if self.row_of[m.batch_id] > after][:limit]
        if cap is not None:  # stop before the payloads pass the cap, but return one
            total, n = 0, 0
            for m in expect:
                total += len(m.payload)
                if total > cap and n:
                    break
                n += 1
            expect = expect[:n]
        assert [s.batch_id for s in got] == [m.batch_id for m in expect]
        self.in_flight.update((s.batch_id, s) for s in got)

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        """PubAcks for some batches in flight, some perhaps dropped meanwhile: delete them."""
        ids = data.draw(st.sets(st.sampled_from(sorted(self.in_flight)), min_size=1))
        acked = [self.in_flight.pop(i) for i in sorted(ids)]
        expect = 0
        for s in acked:
            m = self._model(s.batch_id)
            if m is None:  # dropped while in flight: counted then, not published now
                continue
            self.stored.remove(m)
            self.gone[m.batch_id] = "published"
            for source, n in m.sources.items():
                self.accounts[source].published += n
            expect += m.readings
        assert self.b.delete_batches(acked) == expect

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def mark_attempted(self, data: st.DataObject) -> None:
        """The uplink marks a window attempted before publishing it."""
        ids = data.draw(st.sets(st.sampled_from(sorted(self.in_flight)), min_size=1))
        self.b.mark_attempted(self.in_flight[i].row for i in sorted(ids))
        for i in ids:
            m = self._model(i)
            if m is not None:  # marking a batch already dropped marks nothing that exists
                m.attempted = True

    @rule(k=st.integers(1, 3))
    def age(self, k: int) -> None:
        """Make the k oldest batches older than max_age (the clock cannot be injected)."""
        self.b.connection.execute(
            "UPDATE batches SET created_ns = 0 WHERE id IN"
            " (SELECT id FROM batches ORDER BY id LIMIT ?)",
            (k,),
        )
        for m in self.stored[:k]:
            m.aged = True

    @rule()
    def expire(self) -> None:
        dropped: Counter[str] = Counter()
        for m in self._expirable():
            self._drop(m, "expired", dropped)
        assert self.b.expire() == dropped["expired"]

    @rule()
    def restart(self) -> None:
        """Close and reopen from the same file; in-flight batches stay in flight, so their
        acks after the restart test that rows keep naming the same batches."""
        self.b.close()
        self._open()
        assert self.b.instance == self.instance
        assert self.b.deliveries.records == self.records
        assert self.b.deliveries.ordinals == self.ordinals

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def guarantees_hold(self) -> None:
        if self.buf is None:
            return
        b = self.buf
        stats = b.stats()
        # the room kept in memory is the room in the file, and within bounds
        assert stats.bytes == b._bytes == self._bytes(), (stats.bytes, b._bytes, self._bytes())
        assert stats.bytes <= MAX_BYTES
        assert (stats.batches, stats.readings, stats.dead_letters) == (
            len(self.stored),
            sum(m.readings for m in self.stored),
            self.dead_letters,
        )
        # exactly the model's batches are readable, oldest first; nothing gone is readable
        everything = b.oldest_batches(999)
        self._check_read(everything)
        readable = [s.batch_id for s in everything]
        assert readable == [m.batch_id for m in self.stored]
        assert not set(readable) & set(self.gone)
        # the accounting reconciles and agrees with what the test did
        accts = accounting.accounts(b.connection)
        for source in set(accts) | set(SOURCES):
            got = accts.get(source, accounting.SourceAccount(source))
            assert got.balance == 0, got
            want = self.accounts[source]
            buffered = sum(m.sources.get(source, 0) for m in self.stored)
            assert (got.received, got.published, got.buffered, got.dead_lettered) == (
                want.received,
                want.published,
                buffered,
                want.dead_lettered,
            ), (source, got, want)
            assert +got.dropped == +want.dropped, (source, got.dropped, want.dropped)
            counted = b.counters().get(f"redelivered:{source}", 0)
            assert counted == self.redelivered[source], source

    def teardown(self) -> None:
        if self.buf is not None:
            self.buf.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class DropOldestMachine(BufferMachine):
    policy = "drop_oldest"


class DropNewestMachine(BufferMachine):
    policy = "drop_newest"


class BlockMachine(BufferMachine):
    policy = "block"


@pytest.mark.parametrize("machine", [DropOldestMachine, DropNewestMachine, BlockMachine])
def test_buffer_state_machine(machine: type[BufferMachine]) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=100,
            stateful_step_count=40,
            deadline=None,  # SQLite fsyncs: per-step time varies with the disk
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- regressions: what the machine found, as plain examples ---------------------------------


def _buffer(path: Path, overflow: str, max_age_s: float = 0.0) -> SqliteBuffer:
    buf = SqliteBuffer(path, max_bytes=MAX_BYTES, overflow=overflow, max_age_s=max_age_s)
    buf.open()
    return buf


def _commit(buf: SqliteBuffer, size: int, readings: int = 1, source: str = "mqtt0") -> None:
    payload = random.Random(size).randbytes(size)
    intake = SourceCounts(Counter({source: readings}))
    buf.commit(PendingBatch("ct", readings, payload), buf.next_batch_id(AGENT), [], None, intake)


def _age_all(buf: SqliteBuffer) -> None:
    buf.connection.execute("UPDATE batches SET created_ns = 0")


@pytest.mark.parametrize("dropped_by", ["overflow", "expired"])
def test_a_late_ack_for_a_dropped_batch_never_deletes_the_next_one(
    tmp_path: Path, dropped_by: str
) -> None:
    """SQLite gave a new batch MAX(id) + 1, so when the newest batch was dropped while in
    flight, the next batch took its row, and the dropped batch's PubAck then deleted the new,
    never published batch (and counted it published); an attempt mark did the same."""
    buf = _buffer(tmp_path / "b.sqlite3", "drop_oldest", max_age_s=MAX_AGE_S)
    _commit(buf, 34, readings=2)
    [old] = buf.oldest_batches(1)  # in flight
    if dropped_by == "overflow":
        _commit(buf, 4036, readings=3)  # needs the whole buffer: drops the old batch
    else:
        _age_all(buf)
        _commit(buf, 34, readings=3)  # expires the old batch first
    buf.mark_attempted([old.row])  # the uplink marks, publishes, gets the PubAck
    assert buf.delete_batches([old]) == 0  # it was counted dropped; nothing else goes
    [new] = buf.oldest_batches(10)
    assert (new.readings, new.attempted_ns) == (3, None)
    assert new.row > old.row
    acct = accounting.accounts(buf.connection)["mqtt0"]
    assert (acct.balance, acct.published, acct.buffered, acct.dropped[dropped_by]) == (0, 0, 3, 2)
    buf.close()
    again = _buffer(tmp_path / "b.sqlite3", "drop_oldest", max_age_s=MAX_AGE_S)
    again.delete_batches(again.oldest_batches(10))
    _commit(again, 34)  # rows carry on past deleted ones across a restart too
    assert again.oldest_batches(1)[0].row > new.row


def test_a_flush_without_a_batch_frees_the_room_its_expiry_freed(tmp_path: Path) -> None:
    """A flush of only dead letters expired old batches but left the room counter as it
    was: the buffer then acted fuller than it was (dropping, refusing or blocking) until
    a restart recounted it."""
    buf = _buffer(tmp_path / "b.sqlite3", "block", max_age_s=MAX_AGE_S)
    _commit(buf, 3000)
    _age_all(buf)
    buf.commit(None, buf.next_batch_id(AGENT), [DeadLetter("mqtt0", "invalid_json", "", b"{")])
    assert buf.stats().bytes == buf._bytes == 0
    _commit(buf, 3000)  # under block this raised BufferFull on an empty buffer


@pytest.mark.parametrize("overflow", POLICIES)
def test_a_flush_counts_the_room_its_own_expiry_frees(tmp_path: Path, overflow: str) -> None:
    """A flush's expiry freed room in the same transaction, but the policy still saw the
    room as before it: drop_oldest dropped a live batch too, drop_newest refused the new
    batch, block raised BufferFull (and, rolled back, never expired anything while the
    cloud was away)."""
    buf = _buffer(tmp_path / "b.sqlite3", overflow, max_age_s=MAX_AGE_S)
    _commit(buf, 1500)
    _commit(buf, 1500)
    buf.connection.execute("UPDATE batches SET created_ns = 0 WHERE id = 1")
    _commit(buf, 1500)  # fits once the aged batch is gone
    assert [b.row for b in buf.oldest_batches(10)] == [2, 3]
    acct = accounting.accounts(buf.connection)["mqtt0"]
    assert (acct.balance, acct.buffered, +acct.dropped) == (0, 2, Counter(expired=1))
    assert buf.stats().bytes == buf._bytes

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from app.cli import main
from edge import accounting
from edge.buffer import DeadLetter, PendingBatch, SourceCounts, SqliteBuffer
from edge.dedupe import PendingDeliveries, Record, digest
from edge.errors import BufferFull


def _open(path: Path, max_bytes: int = 1 << 20) -> SqliteBuffer:
    buf = SqliteBuffer(path, max_bytes=max_bytes)
    buf.open()
    return buf


def _records(*packet_ids: int, source: str = "mqtt0") -> PendingDeliveries:
    pending = PendingDeliveries()
    for i, pid in enumerate(packet_ids):
        pending.records[(source, pid)] = Record(digest("t", b"%d" % pid), i)
    pending.ordinals[source] = len(packet_ids)
    return pending


def test_batch_and_delivery_records_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = _open(path)
    bid = buf.next_batch_id("a1")
    buf.commit(
        PendingBatch("ct", 3, b"x" * 100),
        bid,
        [DeadLetter("m", "invalid_json", "d", b"{")],
        _records(7),
    )
    buf.close()
    again = _open(path)
    [stored] = again.oldest_batches(10)
    assert (stored.batch_id, stored.readings, stored.payload) == (bid, 3, b"x" * 100)
    assert again.deliveries.records == {("mqtt0", 7): Record(digest("t", b"7"), 0)}
    assert again.deliveries.ordinals == {"mqtt0": 1}
    assert again.next_batch_id("a1") != bid  # ids never repeat
    assert [d.letter.reason for d in again.oldest_dead_letters(10)] == ["invalid_json"]
    again.delete_batches([stored])
    assert again.stats().batches == 0


def test_drop_oldest_counts_what_it_dropped(tmp_path: Path) -> None:
    buf = _open(tmp_path / "b.sqlite3", max_bytes=1 << 16)
    for _ in range(10):
        buf.commit(PendingBatch("ct", 5, random.randbytes(10_000)), buf.next_batch_id("a"), [])
    assert buf.stats().bytes <= 1 << 16
    kept = buf.stats().readings
    assert buf.counters()["dropped:-:overflow"] == 50 - kept


def test_corrupt_file_is_moved_aside_and_a_fresh_buffer_used(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = _open(path)
    buf.commit(PendingBatch("ct", 1, b"z"), buf.next_batch_id("a"), [], None)
    buf.close()
    path.write_bytes(b"this is not a database" * 100)
    fresh = _open(path)
    assert fresh.stats().batches == 0
    assert list(tmp_path.glob("b.sqlite3.corrupt-*"))


# -- overflow policies, age, disk full, salvage, accounting ---------------------------------


def _policy(path: Path, overflow: str, max_bytes: int = 1 << 16, **kw: float) -> SqliteBuffer:
    buf = SqliteBuffer(path, max_bytes=max_bytes, overflow=overflow, **kw)  # type: ignore[arg-type]
    buf.open()
    return buf


def _add(buf: SqliteBuffer, readings: int, size: int, source: str = "mqtt0") -> None:
    intake = SourceCounts(Counter({source: readings}))
    buf.commit(
        PendingBatch("ct", readings, random.randbytes(size)),
        buf.next_batch_id("a"),
        [],
        None,
        intake,
    )


def _balanced(buf: SqliteBuffer) -> dict[str, accounting.SourceAccount]:
    accts = accounting.accounts(buf.connection)
    assert all(a.balance == 0 for a in accts.values()), accts
    return accts


def test_drop_newest_keeps_the_old_and_counts_the_new(tmp_path: Path) -> None:
    buf = _policy(tmp_path / "b.sqlite3", "drop_newest")
    for _ in range(10):
        _add(buf, 5, 10_000)
    assert buf.stats().batches == 6  # 6 x 10 kB fit in 64 KiB
    assert [b.row for b in buf.oldest_batches(10)] == [1, 2, 3, 4, 5, 6]
    acct = _balanced(buf)["mqtt0"]
    assert acct.dropped == {"overflow": 20}
    assert acct.received == 50


def test_block_raises_and_leaves_the_buffer_unchanged(tmp_path: Path) -> None:
    buf = _policy(tmp_path / "b.sqlite3", "block")
    for _ in range(6):
        _add(buf, 5, 10_000)
    before = (buf.stats(), buf.counters(), buf.next_batch_id("a"))
    with pytest.raises(BufferFull):
        _add(buf, 5, 10_000)
    assert (buf.stats(), buf.counters(), buf.next_batch_id("a")) == before
    buf.delete_batches(buf.oldest_batches(1))
    _add(buf, 5, 10_000)  # room again
    acct = _balanced(buf)["mqtt0"]
    assert (acct.published, acct.buffered, acct.dropped.total()) == (5, 30, 0)


def test_batches_older_than_max_age_expire_and_are_counted(tmp_path: Path) -> None:
    buf = _policy(tmp_path / "b.sqlite3", "drop_oldest", max_bytes=1 << 20, max_age_s=3600)
    _add(buf, 7, 100)
    old = time.time_ns() - 2 * 3600 * 10**9
    buf.connection.execute("UPDATE batches SET created_ns = ?", (old,))
    assert buf.expire() == 7
    _add(buf, 3, 100)
    acct = _balanced(buf)["mqtt0"]
    assert (acct.dropped["expired"], acct.buffered) == (7, 3)


def _fill_disk(buf: SqliteBuffer) -> None:
    """Make the 'disk' full: SQLite may not grow the file by another page."""
    db = buf.connection
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute(f"PRAGMA max_page_count = {pages}")


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "block"])
def test_a_full_disk_is_handled_by_the_overflow_policy(tmp_path: Path, overflow: str) -> None:
    buf = _policy(tmp_path / "b.sqlite3", overflow, max_bytes=1 << 30)
    for _ in range(5):
        _add(buf, 10, 20_000)
    _fill_disk(buf)
    if overflow == "block":
        with pytest.raises(BufferFull):
            _add(buf, 10, 20_000)
        assert buf.stats().batches == 5
        return
    _add(buf, 10, 20_000)
    acct = _balanced(buf)["mqtt0"]
    assert acct.received == 60
    if overflow == "drop_oldest":
        assert acct.dropped["disk_full"] >= 10 and acct.buffered >= 10
        assert buf.oldest_batches(10)[-1].row == 6  # the new batch was stored
    else:
        assert (acct.dropped["disk_full"], acct.buffered) == (10, 50)


def test_a_batch_dropped_while_in_flight_is_not_counted_published_too(tmp_path: Path) -> None:
    buf = _policy(tmp_path / "b.sqlite3", "drop_oldest")
    for _ in range(6):
        _add(buf, 5, 10_000)
    in_flight = buf.oldest_batches(2)  # read and sent; meanwhile the buffer overflows
    _add(buf, 5, 10_000)
    assert buf.oldest_batches(1)[0].row == 2  # batch 1 was dropped
    assert buf.delete_batches(in_flight) == 5  # both acked: only batch 2 still counted
    acct = _balanced(buf)["mqtt0"]
    assert (acct.published, acct.dropped["overflow"], acct.buffered) == (5, 5, 25)
    assert buf._bytes == buf.stats().bytes  # the room kept in memory freed only batch 2


def test_drop_oldest_spares_batches_in_flight(tmp_path: Path) -> None:
    # A batch sent whose PubAck has not come may be in the stream already: dropping it
    # would count as lost what the cloud holds (seen in test_full_disk_agent: more
    # readings counted dropped than were missing). The oldest not yet sent goes first.
    buf = _policy(tmp_path / "b.sqlite3", "drop_oldest")
    for _ in range(6):
        _add(buf, 5, 10_000)
    buf.mark_attempted(b.row for b in buf.oldest_batches(2))  # rows 1 and 2 in flight
    _add(buf, 5, 10_000)
    rows = [b.row for b in buf.oldest_batches(10)]
    assert rows[:3] == [1, 2, 4]  # row 3, the oldest not sent, was dropped
    # every batch in flight: then the oldest of them goes
    buf.mark_attempted(rows)
    _add(buf, 5, 10_000)
    assert buf.oldest_batches(1)[0].row == 2
    assert _balanced(buf)["mqtt0"].dropped["overflow"] == 10


def test_marking_a_batch_dropped_since_it_was_read_leaves_no_mark(tmp_path: Path) -> None:
    buf = _policy(tmp_path / "b.sqlite3", "drop_oldest")
    for _ in range(6):
        _add(buf, 5, 10_000)
    read = buf.oldest_batches(2)
    _add(buf, 5, 10_000)  # drops batch 1
    buf.mark_attempted(b.row for b in read)
    marked = [r[0] for r in buf.connection.execute("SELECT id FROM attempted ORDER BY id")]
    assert marked == [read[1].row]
    assert buf.oldest_batches(1)[0].attempted_ns is not None


def test_accounting_reconciles_across_reopen_with_dead_letters_and_redeliveries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.sqlite3"
    buf = _policy(path, "drop_oldest", max_bytes=1 << 20)
    intake = SourceCounts(Counter({"mqtt0": 4, "mqtt1": 2}), Counter({"mqtt0": 3}))
    letter = DeadLetter("mqtt1", "invalid_json", "", b"{")
    buf.commit(PendingBatch("ct", 6, b"x" * 10), buf.next_batch_id("a"), [letter], None, intake)
    [b] = buf.oldest_batches(1)
    buf.close()
    again = _policy(path, "drop_oldest", max_bytes=1 << 20)
    accts = _balanced(again)
    assert accts["mqtt0"].as_dict() == {
        "received": 4,  # a redelivered message is not received again
        "published": 0,
        "buffered": 4,
        "dropped": {},
        "dead_lettered": 0,
        "summarised": 0,
        "reconciles": True,
    }
    assert (accts["mqtt1"].received, accts["mqtt1"].dead_lettered) == (3, 1)
    assert again.counters()["redelivered:mqtt0"] == 3
    again.delete_batches([b])
    accts = _balanced(again)
    assert (accts["mqtt0"].published, accts["mqtt1"].published) == (4, 2)


def test_corrupt_index_moves_file_aside_and_salvages_the_batches(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = _open(path)
    ids = []
    for i in range(20):
        ids.append(buf.next_batch_id("a"))
        buf.commit(PendingBatch("ct", 1, bytes([i]) * 3000), ids[-1], [], _records(i + 1))
    instance = buf.instance
    buf.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = buf.connection.execute(
        "SELECT rootpage FROM sqlite_master WHERE name LIKE 'sqlite_autoindex_batches%'"
    ).fetchone()[0]
    buf.close()
    with open(path, "r+b") as f:  # scribble over the batch_id index: quick_check fails
        f.seek((root - 1) * 4096)
        f.write(b"\xff" * 4096)
    fresh = _open(path)
    assert list(tmp_path.glob("b.sqlite3.corrupt-*"))
    assert [b.batch_id for b in fresh.oldest_batches(100)] == ids
    assert fresh.instance == instance and len(fresh.deliveries.records) == 20
    assert fresh.next_batch_id("a") not in ids
    assert sqlite3.connect(path).execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_truncated_file_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = _open(path)
    for _ in range(20):
        buf.commit(PendingBatch("ct", 1, b"q" * 3000), buf.next_batch_id("a"), [], None)
    buf.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    buf.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 3)
    fresh = _open(path)  # never refuses to start
    _add(fresh, 1, 10)
    assert fresh.stats().batches >= 1


def test_edge_stats_prints_the_accounting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    buf = _policy(tmp_path / "buffer.sqlite3", "drop_oldest", max_bytes=1 << 20)
    _add(buf, 5, 100)
    assert main(["edge", "stats", "--data-dir", str(tmp_path), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["sources"]["mqtt0"]["buffered"] == 5 and report["reconciles"]
    assert main(["edge", "stats", "--data-dir", str(tmp_path)]) == 0
    assert "holds" in capsys.readouterr().out
    buf.close()
    assert main(["edge", "stats", "--data-dir", str(tmp_path / "nope")]) == 2


def test_quarantined_batches_are_dropped_and_counted_by_source(tmp_path: Path) -> None:
    buf = _open(tmp_path / "b.sqlite3")
    _add(buf, 5, 100, "mqtt0")
    _add(buf, 3, 100, "mqtt1")
    first, second = buf.oldest_batches(10)
    assert buf.quarantine_batches([first], "quarantined") == 5
    assert buf.quarantine_batches([first], "quarantined") == 0  # gone already: once only
    accts = _balanced(buf)
    assert accts["mqtt0"].dropped == {"quarantined": 5} and accts["mqtt1"].buffered == 3
    assert [b.row for b in buf.oldest_batches(10)] == [second.row]
    assert buf.stats().bytes == buf._bytes == second.stored_bytes

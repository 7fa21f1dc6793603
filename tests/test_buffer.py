from __future__ import annotations

from pathlib import Path

from edge.buffer import DeadLetter, PendingBatch, SqliteBuffer


def _open(path: Path, max_bytes: int = 1 << 20) -> SqliteBuffer:
    buf = SqliteBuffer(path, max_bytes=max_bytes)
    buf.open()
    return buf


def test_batch_and_high_water_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = _open(path)
    bid = buf.next_batch_id("a1")
    buf.commit(
        PendingBatch("ct", 3, b"x" * 100),
        bid,
        [DeadLetter("m", "invalid_json", "d", b"{")],
        {"s/dev1": 7},
    )
    buf.close()
    again = _open(path)
    [stored] = again.oldest_batches(10)
    assert (stored.batch_id, stored.readings, stored.payload) == (bid, 3, b"x" * 100)
    assert again.high_water == {"s/dev1": 7}
    assert again.next_batch_id("a1") != bid  # ids never repeat
    assert [d.letter.reason for d in again.oldest_dead_letters(10)] == ["invalid_json"]
    again.delete_batches([stored.row])
    assert again.stats().batches == 0


def test_drop_oldest_counts_what_it_dropped(tmp_path: Path) -> None:
    buf = _open(tmp_path / "b.sqlite3", max_bytes=1 << 16)
    for _ in range(10):
        buf.commit(PendingBatch("ct", 5, b"y" * 10_000), buf.next_batch_id("a"), [], {})
    assert buf.stats().bytes <= 1 << 16
    kept = buf.stats().readings
    assert buf.counters()["dropped:-:overflow"] == 50 - kept


def test_corrupt_file_is_moved_aside_and_a_fresh_buffer_used(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = _open(path)
    buf.commit(PendingBatch("ct", 1, b"z"), buf.next_batch_id("a"), [], {})
    buf.close()
    path.write_bytes(b"this is not a database" * 100)
    fresh = _open(path)
    assert fresh.stats().batches == 0
    assert list(tmp_path.glob("b.sqlite3.corrupt-*"))

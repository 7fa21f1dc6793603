"""Redelivery recognition (edge/dedupe.py), without any server: each rule, and its bounds."""

from __future__ import annotations

import os
from pathlib import Path

from edge.buffer import SqliteBuffer
from edge.dedupe import HORIZON, PRUNE_EVERY, DeliveryLog, ExactCopies, PendingDeliveries, digest

SRC = "mqtt0"
A = digest("sensors/s1/d1", b"21.5")
B = digest("sensors/s1/d1", b"22.0")


def _taken(log: DeliveryLog, pid: int, dup: bool, content: bytes) -> tuple[bool, PendingDeliveries]:
    pending = PendingDeliveries()
    copy = log.redelivered(SRC, pid, dup, content, pending)
    log.apply(pending, log.floors(pending))  # what a commit does
    return copy, pending


def test_only_a_dup_with_the_same_packet_id_and_content_is_a_copy() -> None:
    log = DeliveryLog({}, {})
    assert _taken(log, 7, False, A)[0] is False
    assert _taken(log, 7, True, A)[0] is True  # the broker's resend
    assert _taken(log, 6, True, A)[0] is False  # another id, not fresh: never taken, kept
    assert _taken(log, 7, True, B)[0] is False  # other content under that id: kept
    assert _taken(log, 7, True, B)[0] is True  # ... and now it is the record


def test_nats_server_resend_under_a_fresh_id_after_our_puback_is_a_copy() -> None:
    # Measured on nats-server's MQTT listener (tests/edge/test_full_disk_agent.py): a
    # PUBACK that reaches it about its ack_wait races the JetStream redelivery, which goes
    # out with DUP=1 under the next packet id in turn.
    log = DeliveryLog({}, {})
    for pid in range(1, 5):
        assert _taken(log, pid, False, digest("t", b"%d" % pid))[0] is False
    assert _taken(log, 5, True, digest("t", b"2"))[0] is True  # fresh id, same bytes
    assert log.fresh_id_copies == 1
    assert _taken(log, 6, True, digest("t", b"9"))[0] is False  # bytes never taken: kept


def test_a_fresh_id_copy_is_only_matched_on_its_own_connection() -> None:
    log = DeliveryLog({}, {})
    pending = PendingDeliveries()
    assert log.redelivered(SRC, 1, False, A, pending, connection=1) is False
    log.apply(pending, log.floors(pending))
    # After a reconnect, a message B with A's bytes whose first send was lost on the old
    # connection comes again under its old id (2, not fresh once 3 was sent) ...
    pending = PendingDeliveries()
    assert log.redelivered(SRC, 3, False, B, pending, connection=2) is False
    assert log.redelivered(SRC, 2, True, A, pending, connection=2) is False  # kept
    # ... and a fresh id matches only what this connection took (B, not the old A).
    assert log.redelivered(SRC, 4, True, B, pending, connection=2) is True
    assert log.redelivered(SRC, 5, True, digest("t", b"x"), pending, connection=2) is False


def test_old_ids_resent_after_a_reconnect_do_not_make_a_later_one_look_fresh() -> None:
    # Two lost first sends with the same bytes (ids 10 and 11), both resent on the new
    # connection: the second is not a copy of the first, though its id comes after.
    log = DeliveryLog({}, {})
    pending = PendingDeliveries()
    assert log.redelivered(SRC, 10, True, A, pending, connection=2) is False
    assert log.redelivered(SRC, 11, True, A, pending, connection=2) is False
    assert log.redelivered(SRC, 12, False, B, pending, connection=2) is False
    assert log.redelivered(SRC, 11, True, A, pending, connection=2) is True  # same id again


def test_a_fresh_publish_is_never_a_copy_even_with_the_same_id_and_content() -> None:
    # The same payload again (a value that does not change) under a reused packet id:
    # DUP=0 says it is a new message.
    log = DeliveryLog({}, {})
    for _ in range(3):
        assert _taken(log, 7, False, A)[0] is False


def test_without_a_packet_id_nothing_is_recorded_or_dropped() -> None:
    log = DeliveryLog({}, {})
    copy, pending = _taken(log, 0, True, A)
    assert copy is False and not pending and not log.records


def test_a_copy_of_a_message_still_in_the_open_batch_is_dropped() -> None:
    # nats-server resends after its ack_wait on a live connection: the first delivery may
    # not be durable yet, and will be with the batch that now holds both acks.
    log = DeliveryLog({}, {})
    pending = PendingDeliveries()
    assert log.redelivered(SRC, 3, False, A, pending) is False
    assert log.redelivered(SRC, 3, True, A, pending) is True
    assert not log.records  # nothing durable until the commit


def test_a_record_older_than_the_horizon_proves_nothing() -> None:
    for since, copy in ((HORIZON - 1, True), (HORIZON, False)):
        log = DeliveryLog({}, {})
        _taken(log, 9, False, A)
        log.ordinals[SRC] = 1 + since  # `since` more messages of the source recorded
        assert _taken(log, 9, True, A)[0] is copy


def test_records_are_pruned_by_ordinal_and_bounded_by_packet_ids(tmp_path: Path) -> None:
    buf = SqliteBuffer(tmp_path / "b.sqlite3", max_bytes=1 << 20)
    buf.open()
    total = HORIZON + 2 * PRUNE_EVERY
    for start in range(0, total, 1000):  # batches of 1000 messages, ids wrapping at 65535
        pending = PendingDeliveries()
        for n in range(start, min(start + 1000, total)):
            buf.deliveries.redelivered(SRC, n % 65_535 + 1, False, A, pending)
        buf.commit(None, buf.next_batch_id("a"), [], pending)
    kept = len(buf.deliveries.records)
    assert HORIZON <= kept <= HORIZON + PRUNE_EVERY + 1000
    held = dict(buf.deliveries.records)
    buf.close()
    buf = SqliteBuffer(tmp_path / "b.sqlite3", max_bytes=1 << 20)
    buf.open()  # what the file holds: the same, plus at most a run pruned only in memory
    reloaded = buf.deliveries.records
    assert held.items() <= reloaded.items()
    assert len(reloaded) <= HORIZON + PRUNE_EVERY + 2000
    buf.close()


def test_records_are_durable_and_a_lost_session_clears_them(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = SqliteBuffer(path, max_bytes=1 << 20)
    buf.open()
    pending = PendingDeliveries()
    assert not buf.deliveries.redelivered(SRC, 5, False, A, pending)
    assert not buf.deliveries.redelivered("mqtt1", 5, False, A, pending)
    buf.commit(None, buf.next_batch_id("a"), [], pending)
    buf.close()
    buf = SqliteBuffer(path, max_bytes=1 << 20)
    buf.open()
    assert buf.deliveries.redelivered(SRC, 5, True, A, PendingDeliveries())  # after a restart
    buf.forget_deliveries(SRC)
    assert not buf.deliveries.redelivered(SRC, 5, True, A, PendingDeliveries())
    assert buf.deliveries.redelivered("mqtt1", 5, True, A, PendingDeliveries())
    buf.close()
    buf = SqliteBuffer(path, max_bytes=1 << 20)
    buf.open()
    assert set(buf.deliveries.records) == {("mqtt1", 5)}
    buf.close()


def test_write_cost_of_the_records_per_commit(tmp_path: Path) -> None:
    """What the records add to each commit, in bytes written (docs/benchmarks.md has the
    figures); here only that it stays small: 1000 one-reading messages per commit."""
    buf = SqliteBuffer(tmp_path / "b.sqlite3", max_bytes=1 << 30)
    buf.open()
    size = os.path.getsize
    for start in range(0, 20_000, 1000):
        pending = PendingDeliveries()
        for n in range(start, start + 1000):
            buf.deliveries.redelivered(SRC, n % 65_535 + 1, False, digest("t", b"%d" % n), pending)
        buf.commit(None, buf.next_batch_id("a"), [], pending)
    assert size(tmp_path / "b.sqlite3") + size(tmp_path / "b.sqlite3-wal") < 8 << 20
    buf.close()


def test_exact_copies_forget_series_silent_past_the_prune_time() -> None:
    copies = ExactCopies(per_series=4, silent_s=60.0)
    assert copies.fresh("s/d/t", 1, 10, 1.0, now=0.0)
    assert not copies.fresh("s/d/t", 1, 10, 1.0, now=1.0)  # the very same reading
    assert copies.fresh("s/d/t", 1, 11, 1.0, now=1.0)  # seq again, later: a reboot
    for i in range(100_000):  # a flood of device names, then silence
        copies.fresh(f"s/flood-{i}/t", 1, i, 1.0, now=2.0)
    assert len(copies) == 100_002
    copies.fresh("s/d/t", 2, 12, 1.0, now=61.0)  # still talking
    copies.prune(now=63.0)
    assert len(copies) == 3  # only the live series is left, bounded per series
    for seq in range(3, 20):
        copies.fresh("s/d/t", seq, seq + 10, 1.0, now=64.0)
    assert len(copies) == 4

"""The reorder-tolerant duplicate filter (edge/dedupe.py), without any server."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.buffer import PendingBatch, SqliteBuffer
from edge.dedupe import MAX_GAP, WINDOW, SeqFilter


def _run(f: SeqFilter, seqs: list[int]) -> list[int]:
    hw: dict[str, int] = {}
    holes: dict[str, set[int]] = {}
    kept = [s for s in seqs if f.accept("d", s, hw, holes)]
    f.high_water.update(hw)  # what a commit does
    f.holes.update(holes)
    return kept


def test_late_redelivery_below_the_high_water_mark_is_kept_once() -> None:
    f = SeqFilter({}, {})
    # 5 and 6 were delivered to an agent that crashed; the broker sends 7.. first.
    assert _run(f, [1, 2, 3, 4, 7, 8, 9]) == [1, 2, 3, 4, 7, 8, 9]
    assert f.holes["d"] == {5, 6}
    assert _run(f, [5, 6, 5, 7, 10]) == [5, 6, 10]
    assert not f.holes["d"]


def test_unseen_device_may_start_out_of_order() -> None:
    f = SeqFilter({}, {})
    assert _run(f, [3, 1, 2, 1, 3]) == [3, 1, 2]


def test_big_jumps_and_old_holes_are_not_waited_for() -> None:
    f = SeqFilter({}, {})
    assert _run(f, [1, 2, 4, 4 + MAX_GAP + 2]) == [1, 2, 4, 4 + MAX_GAP + 2]
    assert f.holes["d"] == {3}  # the big jump left no holes
    assert _run(f, [WINDOW + 10, 3]) == [WINDOW + 10]  # hole 3 is too old by now


def test_regular_gaps_of_a_strided_series_are_not_holes() -> None:
    # A device numbering readings across two metrics: each series steps by 2.
    f = SeqFilter({}, {})
    assert _run(f, [1, 3, 5, 7, 13, 15]) == [1, 3, 5, 7, 13, 15]
    # Before the stride is learnt the first gap counts (2, never filled, forgotten after
    # WINDOW seqs); after it, only the unusual jump leaves holes, on the stride.
    assert f.holes["d"] == {2, 9, 11}
    assert _run(f, [11, 9, 10, 17]) == [11, 9, 17]


def test_a_column_is_vectorised_when_usual_and_exact_when_not() -> None:
    f = SeqFilter({}, {})
    hw: dict[str, int] = {}
    holes: dict[str, set[int]] = {}
    first = f.accept_run("d", np.array([1, 2, 3], dtype=np.int64), hw, holes)
    usual = f.accept_run("d", np.array([4, 5, 6], dtype=np.int64), hw, holes)
    odd = f.accept_run("d", np.array([9, 5, 7, 8, 7], dtype=np.int64), hw, holes)
    assert first.all() and usual.all()
    assert odd.tolist() == [True, False, True, True, False]
    assert hw == {"d": 9} and holes == {"d": set()}


def test_holes_are_durable_with_the_batch(tmp_path: Path) -> None:
    buf = SqliteBuffer(tmp_path / "b.sqlite3", max_bytes=1 << 20)
    buf.open()
    buf.commit(PendingBatch("ct", 1, b"x"), buf.next_batch_id("a"), [], {"d": 9}, None, {"d": {4}})
    buf.close()
    again = SqliteBuffer(tmp_path / "b.sqlite3", max_bytes=1 << 20)
    again.open()
    assert (again.high_water, again.holes) == ({"d": 9}, {"d": {4}})
    f = SeqFilter(again.high_water, again.holes)
    assert _run(f, [4, 4, 9]) == [4]


def test_a_flush_that_does_not_touch_holes_keeps_them_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = SqliteBuffer(path, max_bytes=1 << 20)
    buf.open()
    buf.commit(None, buf.next_batch_id("a"), [], {"d": 9}, None, {"d": {4}})
    buf.commit(None, buf.next_batch_id("a"), [], {"d": 10}, None, {})
    buf.close()
    again = SqliteBuffer(path, max_bytes=1 << 20)
    again.open()
    assert (again.high_water, again.holes) == ({"d": 10}, {"d": {4}})

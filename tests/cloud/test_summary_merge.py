"""Edge summaries (`overflow = "downsample"`) in the cloud's windows, without a server:
`Cell` merges exactly, placement follows cloud/summaries.py, and the tracker's windows over
summarised data equal a plain recomputation from the readings, after copies, late ones and
a checkpoint anywhere too."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import orjson
import pytest

from cloud.records import WindowId, WindowRecord
from cloud.summaries import Cell, merge_cells, window_of
from cloud.tracker import Tracker
from cloud.windows import window_label
from edge import compaction
from gateway import codec
from gateway.codec import Batch, Summary
from tests.cloud.test_tracker import _finish, _run

SEC = 1_000_000_000
T0 = 1_700_002_800 * SEC  # a whole hour
SUBJECT = "telemetry.s1.a1"
Reading = tuple[str, int, float]  # device, event time, value
Msgs = list[tuple[str, Batch]]


def _readings(rng: random.Random, devices: int, seconds: int) -> list[Reading]:
    """One reading per device and second; values multiples of 1/4, so every sum is exact."""
    return [
        (f"d{d}", T0 + s * SEC, rng.randint(-400, 400) / 4)
        for s in range(seconds)
        for d in range(devices)
    ]


def _batch(rows: list[Reading], batch_id: str) -> Batch:
    b = codec.ColumnBuilder("s1", "a1", batch_id)
    for device, t, v in rows:
        b.add(device, "temp", "Cel", v, t, (t - T0) // SEC)
    return b.build()


def _stream(rows: list[Reading], devices: int) -> tuple[Msgs, list[Reading]]:
    """What a downsampling agent sends for these readings, oldest first: the first 10
    minutes as one batch of 10 min summaries, up to 20:30 as minute summaries in chunks
    that split minutes, the rest raw (so the minute 20 window has both). Also returns the
    readings sent raw."""
    per_s = devices
    ten = [r for r in rows if r[1] < T0 + 600 * SEC]
    mid = [r for r in rows if T0 + 600 * SEC <= r[1] < T0 + 1230 * SEC]
    raw = [r for r in rows if r[1] >= T0 + 1230 * SEC]
    msgs: Msgs = [(SUBJECT, compaction.summarise([_batch(ten, "b0")], 600, "a1:i:1.600s"))]
    step = 150 * per_s  # 2.5 minutes per chunk: minute windows split between two summaries
    for i in range(0, len(mid), step):
        part = _batch(mid[i : i + step], f"m{i}")
        msgs.append((SUBJECT, compaction.summarise([part], 60, f"a1:i:{i + 2}.60s")))
    for i in range(0, len(raw), 10 * per_s):
        msgs.append((SUBJECT, _batch(raw[i : i + 10 * per_s], f"r{i}")))
    return msgs, raw


def _truth(rows: list[Reading], width_s: int) -> dict[WindowId, dict[str, Any]]:
    """Per window of the readings themselves: count, min, max, sum, mean, first, last."""
    groups: dict[WindowId, list[tuple[int, float]]] = {}
    for device, t, v in rows:
        key = (window_label(width_s), "s1", device, "temp", t - t % (width_s * SEC))
        groups.setdefault(key, []).append((t, v))
    return {k: _stats(sorted(tv)) for k, tv in groups.items()}


def _stats(tv: list[tuple[int, float]]) -> dict[str, Any]:
    vals = [v for _, v in tv]
    return {
        "count": len(vals),
        "min": min(vals),
        "max": max(vals),
        "sum": sum(vals),
        "mean": sum(vals) / len(vals),
        "first": tv[0][1],
        "last": tv[-1][1],
    }


def _placed(msgs: Msgs, width_s: int) -> dict[WindowId, dict[str, Any]]:
    """The documented placement, recomputed plainly: raw readings in their windows, each
    summary whole in the window of its first reading."""
    width = width_s * SEC
    cells: dict[WindowId, list[tuple[int, int, float, float, float, int, float, int, float]]]
    cells = {}
    for _, b in msgs:
        for r in b.readings():
            key = (window_label(width_s), "s1", r.device, "temp", r.time_ns - r.time_ns % width)
            cells.setdefault(key, []).append(
                (1, 0, r.value, r.value, r.value, *(r.time_ns, r.value) * 2)
            )
        for s in b.summaries:
            key = (
                window_label(width_s),
                "s1",
                b.series[s.series][0],
                "temp",
                s.first_ns - s.first_ns % width,
            )
            cells.setdefault(key, []).append(
                (s.count, 1, s.min, s.max, s.sum, s.first_ns, s.first, s.last_ns, s.last)
            )
    out = {}
    for key, parts in cells.items():
        count = sum(p[0] for p in parts)
        total = sum(p[4] for p in parts)
        out[key] = {
            "count": count,
            "min": min(p[2] for p in parts),
            "max": max(p[3] for p in parts),
            "sum": total,
            "mean": total / count,
            "first": min(parts, key=lambda p: p[5])[6],
            "last": max(parts, key=lambda p: p[7])[8],
        }
    return out


def _assert_matches(
    got: dict[WindowId, WindowRecord], want: dict[WindowId, dict[str, Any]], label: str
) -> None:
    mine = {k: r for k, r in got.items() if k[0] == label}
    assert mine.keys() == want.keys(), label
    for key, w in want.items():
        g = mine[key]
        for field, value in w.items():
            assert getattr(g, field) == value, (key, field)


def _cell(tv: list[tuple[int, float]]) -> Cell:
    vals = [v for _, v in tv]
    first = min(tv)
    last = max(tv, key=lambda p: (p[0], -p[1]))
    return Cell(len(vals), math.fsum(vals), min(vals), max(vals), first, last)


def test_cells_merge_exactly_and_in_any_order() -> None:
    rng = random.Random(5)
    tv = [(rng.randrange(100) * SEC, rng.randint(-400, 400) / 4) for _ in range(500)]
    whole = _cell(tv)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(tv)), 6))
        parts = [_cell(tv[a:b]) for a, b in zip([0, *cuts], [*cuts, len(tv)], strict=True)]
        rng.shuffle(parts)
        assert merge_cells(parts) == whole
        assert parts[0].merge(merge_cells(parts[1:])) == whole
    # Arbitrary floats: the sum is math.fsum of the parts, whatever their order.
    parts = [Cell(1, rng.uniform(-1e6, 1e6), 0.0, 0.0, (0, 0.0), (0, 0.0)) for _ in range(50)]
    want = math.fsum(p.sum for p in parts)
    for _ in range(5):
        rng.shuffle(parts)
        assert merge_cells(parts).sum == want
    # Equal times: the smaller value is first and last, whichever part comes first.
    a = Cell(1, 2.0, 2.0, 2.0, (5, 2.0), (9, 2.0))
    b = Cell(1, 1.0, 1.0, 1.0, (5, 1.0), (9, 1.0))
    assert a.merge(b).first == b.merge(a).first == (5, 1.0)
    assert a.merge(b).last == b.merge(a).last == (9, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        merge_cells([])


def _summary(start_s: int, width_s: int, first_s: int, last_s: int) -> Summary:
    t = T0 + start_s * SEC
    return Summary(0, t, width_s, 3, 1.0, 3.0, 6.0, T0 + first_s * SEC, 1.0, T0 + last_s * SEC, 3.0)


def test_a_summary_goes_to_the_window_of_its_first_reading() -> None:
    minute = _summary(120, 60, 125, 170)
    assert window_of(minute, 60 * SEC) == (T0 + 120 * SEC) // (60 * SEC)  # the one it lies in
    assert window_of(minute, 3600 * SEC) == T0 // (3600 * SEC)
    ten = _summary(0, 600, 37, 590)  # wider than 10 s windows: its first reading's one
    assert window_of(ten, 10 * SEC) == (T0 + 30 * SEC) // (10 * SEC)
    assert window_of(ten, 60 * SEC) == T0 // (60 * SEC)


@pytest.mark.parametrize("seed", [1, 2])
def test_windows_over_summaries_equal_the_readings(seed: int) -> None:
    rows = _readings(random.Random(seed), devices=3, seconds=40 * 60)
    msgs, raw = _stream(rows, devices=3)
    tracker = Tracker([60, 600, 3600], lateness_s=5)
    got, late = _run(tracker, msgs, 1, len(msgs), every=1)
    assert late == []
    _finish(tracker, got)
    for width in (600, 3600):  # multiples of every summary's width: exact per window
        _assert_matches(got, _truth(rows, width), window_label(width))
    _assert_matches(got, _placed(msgs, 60), "1m")  # 10 min summaries in their first minute
    raw_times = {(d, t) for d, t, _ in raw}
    for key, r in got.items():
        inside = [(t, v) for d, t, v in rows if d == key[2] and key[4] <= t < r.end_ns]
        mine = [v for t, v in inside if (key[2], t) in raw_times]
        if key[0] != "1m":
            assert r.summarised == len(inside) - len(mine), key
        if not mine:  # only summaries: no percentiles
            assert math.isnan(r.p50) and math.isnan(r.p95) and math.isnan(r.stddev), key
        else:  # percentiles of the raw readings only
            assert r.p95 == float(np.percentile(mine, 95)), key
    mixed = got[("1m", "s1", "d0", "temp", T0 + 1200 * SEC)]
    assert (mixed.count, mixed.summarised) == (60, 30)
    assert tracker.agents[SUBJECT].widths[0].summaries.by_id == {}  # final ones dropped


def _with_copies(msgs: Msgs, seed: int) -> tuple[Msgs, set[int]]:
    """Some messages again soon after (republished under another Nats-Msg-Id); the
    stream seqs of the copies."""
    rng = random.Random(seed)
    out: Msgs = []
    copies = set()
    for m in msgs:
        out.append(m)
        if rng.random() < 0.4:
            out.append(m)
            copies.add(len(out))
    return out, copies


@pytest.mark.parametrize("seed", [3, 4])
def test_copies_count_once_and_a_checkpoint_anywhere_replays_the_same(seed: int) -> None:
    rows = _readings(random.Random(seed), devices=2, seconds=30 * 60)
    msgs, _ = _stream(rows, devices=2)
    copies, again = _with_copies(msgs, seed)
    whole = Tracker([60, 600], lateness_s=5)
    want, want_late = _run(whole, copies, 1, len(copies), every=1)
    _finish(whole, want)
    assert whole.duplicates > 0
    _assert_matches(want, _truth(rows, 600), "10m")
    # A copy of a summary wider than a window comes after its original moved the
    # watermark past that window: late for it (DLQ), as a copy of a final reading is.
    assert {sseq for sseq, _ in want_late} <= again
    for cut in random.Random(seed).sample(range(1, len(copies)), 8):
        before = Tracker([60, 600], lateness_s=5)
        got, late = _run(before, copies, 1, cut, every=1)
        ckpt = orjson.loads(orjson.dumps(before.checkpoint(cut)))
        after = Tracker([60, 600], lateness_s=5)
        start = after.restore(ckpt)
        assert start <= cut + 1
        more, more_late = _run(after, copies, start, len(copies), every=1)
        got.update(more)
        _finish(after, got)
        assert got == want, f"cut at {cut}"
        assert sorted(late + more_late) == sorted(want_late), f"cut at {cut}"


def test_a_late_summary_is_rejected_with_its_readings() -> None:
    rows = _readings(random.Random(6), devices=1, seconds=300)
    tracker = Tracker([60], lateness_s=5)
    tracker.ingest(SUBJECT, 1, _batch(rows[200:], "new"))  # the watermark is at 4:59
    old = compaction.summarise([_batch(rows[:120], "old")], 60, "a1:i:1.60s")
    result = tracker.ingest(SUBJECT, 2, old)
    (late,) = result.rejected
    assert (late.reason, late.summaries) == ("late_1m", (0, 1))
    assert late.readings(old) == 120 and result.summaries == 0


def test_the_live_view_shows_a_window_of_summaries_only() -> None:
    rows = _readings(random.Random(7), devices=1, seconds=90)
    tracker = Tracker([3600], lateness_s=5)
    tracker.ingest(SUBJECT, 1, compaction.summarise([_batch(rows, "b")], 60, "a1:i:1.60s"))
    (live,) = tracker.live()
    want = _truth(rows, 3600)[("1h", "s1", "d0", "temp", T0)]
    assert not live.closed and live.summarised == live.count == want["count"] == 90
    assert (live.min, live.max, live.mean, live.first, live.last) == (
        want["min"], want["max"], want["mean"], want["first"], want["last"],
    )  # fmt: skip
    assert math.isnan(live.p50)

"""`group_stats` equals a plain per-window numpy computation, whatever the order of rows."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import pytest

from bench import aggregate as bench
from cloud.windows import (
    GroupStats,
    better,
    dense_groups,
    first_last,
    group_stats,
    grouped_stats,
    merge_runs,
    pick,
    sort_within_groups,
    stable_small_argsort,
    window_index,
)
from tests.cloud.reference import Row, assert_windows_equal, recompute

WIDTH = 10 * 10**9


def _rows(rng: np.random.Generator, n: int, series: int) -> list[Row]:
    t0 = 1_700_000_000 * 10**9
    out = []
    for i in range(n):
        s = int(rng.integers(0, series))
        # Few distinct values and times, so ties in value and in (time, seq) are exercised.
        value = float(rng.integers(0, 7)) if i % 3 else float(rng.normal(20, 5))
        t = t0 + int(rng.integers(0, 40)) * 10**9 // 2
        out.append(("s", f"d{s}", "t", "u", value, t, int(rng.integers(0, 50))))
    return out


def _as_windows(rows: list[Row], stats: GroupStats) -> dict[Any, dict[str, Any]]:
    out = {}
    for i in range(len(stats)):
        key = ("10s", "s", f"d{int(stats.series[i])}", "t", int(stats.window[i]) * WIDTH)
        out[key] = {
            "count": int(stats.count[i]),
            "min": float(stats.min[i]),
            "max": float(stats.max[i]),
            "mean": float(stats.mean[i]),
            "stddev": float(stats.std[i]),
            "p50": float(stats.p50[i]),
            "p95": float(stats.p95[i]),
            "first": float(stats.first[i]),
            "last": float(stats.last[i]),
            "unit": "u",
        }
    return out


def _stats(rows: list[Row]) -> GroupStats:
    series = np.array([int(r[1][1:]) for r in rows], dtype=np.uint32)
    t = np.array([r[5] for r in rows], dtype=np.int64)
    return group_stats(
        series,
        window_index(t, WIDTH),
        t,
        np.array([r[6] for r in rows], dtype=np.int64),
        np.array([r[4] for r in rows], dtype=np.float64),
    )


@pytest.mark.parametrize("series", [1, 7, 300])
def test_group_stats_equal_plain_numpy_in_any_order(series: int) -> None:
    rng = np.random.default_rng(series)
    rows = _rows(rng, 3000, series)
    want = recompute(rows, [10])
    for _ in range(3):
        shuffled = [rows[i] for i in rng.permutation(len(rows))]
        stats = _stats(shuffled)
        assert_windows_equal(_as_windows(shuffled, stats), want)
        # Bit-identical whatever the order: sums run over value-sorted data.
        assert np.array_equal(stats.sum, _stats(rows).sum)


def test_window_boundaries_are_half_open() -> None:
    t0 = 1_700_000_000 * 10**9 // WIDTH * WIDTH
    t = np.array([t0, t0 + WIDTH - 1, t0 + WIDTH], dtype=np.int64)
    stats = group_stats(np.zeros(3, np.uint32), window_index(t, WIDTH), t, np.arange(3), np.ones(3))
    assert stats.count.tolist() == [2, 1]
    assert (stats.window * WIDTH).tolist() == [t0, t0 + WIDTH]


def test_many_groups_take_the_two_pass_radix_sort() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 200_000, 50_000)
    order = stable_small_argsort(ids, 200_000)
    assert np.array_equal(order, np.argsort(ids, kind="stable"))


def test_sparse_keys_fall_back_to_unique() -> None:
    t = np.array([0, 10**15], dtype=np.int64)  # windows far apart: key span too large
    stats = group_stats(
        np.array([0, 5], np.uint32), window_index(t, WIDTH), t, np.arange(2), np.array([1.0, 2.0])
    )
    assert stats.series.tolist() == [0, 5] and stats.count.tolist() == [1, 1]


def test_empty_input() -> None:
    e = np.empty(0, np.int64)
    assert len(group_stats(e, e, e, e, np.empty(0))) == 0


def test_bench_smoke() -> None:
    result = bench.main(["--readings", "20000", "--series", "100", "--repeat", "1", "--json"])
    assert result["ours_per_s"] > 0 and result["naive_per_s"] > 0


@pytest.mark.parametrize("size", [3, 40, 500])  # the one-sort path and the per-group path
def test_sort_within_groups_sorts_each_group(size: int) -> None:
    rng = np.random.default_rng(size)
    counts = rng.integers(1, 2 * size, 60).astype(np.int64)
    v = rng.integers(-5, 5, int(counts.sum())).astype(np.float64) + rng.random() * 0.5
    got = sort_within_groups(v, counts)
    at = np.cumsum(counts) - counts
    want = np.concatenate([np.sort(v[a : a + c]) for a, c in zip(at, counts, strict=True)])
    assert got.tobytes() == want.tobytes()


def test_merge_runs_sorts_blocks_of_two_ascending_runs() -> None:
    rng = np.random.default_rng(11)
    runs = [
        np.sort(rng.integers(-4, 4, int(rng.integers(0, 30))).astype(np.float64)) for _ in range(80)
    ]
    v = np.concatenate(runs)  # blocks of two runs each: runs 0+1, 2+3, ...
    ends = np.cumsum([len(r) for r in runs])[1::2]
    starts = np.concatenate([[0], ends[:-1]])
    want = np.concatenate([np.sort(v[a:b]) for a, b in zip(starts, ends, strict=True)])
    merge_runs(v, starts, ends)
    assert v.tobytes() == want.tobytes()


@pytest.mark.parametrize("latest", [False, True])
def test_picks_of_two_parts_combine_into_the_pick_of_the_whole(latest: bool) -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(2, 12))
        # Few times, seqs and values: ties in (time, seq) and in value are common.
        t, s = rng.integers(0, 3, n), rng.integers(0, 3, n)
        v = rng.integers(0, 3, n).astype(np.float64)
        cut = int(rng.integers(1, n))
        one = np.zeros(1, dtype=np.int64)
        whole = pick(v, t, s, one, np.array([n]), latest=latest)
        a = pick(v[:cut], t[:cut], s[:cut], one, np.array([cut]), latest=latest)
        b = pick(v[cut:], t[cut:], s[cut:], one, np.array([n - cut]), latest=latest)
        combined = b if better(a, b, latest=latest)[0] else a
        assert (combined.value, combined.time, combined.seq) == (
            whole.value, whole.time, whole.seq
        )  # fmt: skip


def test_grouped_stats_with_the_groups_given_equals_group_stats() -> None:
    rng = np.random.default_rng(3)
    sid = rng.integers(0, 20, 5000)
    win = rng.integers(100, 104, 5000)
    t, s, v = rng.integers(0, 50, 5000), rng.integers(0, 5, 5000), rng.normal(size=5000)
    gid, keys = dense_groups(sid, win)
    want = group_stats(sid, win, t, s, v)
    got = grouped_stats(gid, keys // 4, keys % 4 + 100, t, s, v)
    for field in fields(GroupStats):
        assert getattr(got, field.name).tobytes() == getattr(want, field.name).tobytes()


@pytest.mark.parametrize("in_order", [True, False])
def test_first_last_equals_pick(in_order: bool) -> None:
    rng = np.random.default_rng(11)
    counts = rng.integers(1, 30, 50).astype(np.int64)
    n = int(counts.sum())
    t = np.arange(n) // 2 if in_order else rng.integers(0, 4, n)
    s = np.arange(n) if in_order else rng.integers(0, 3, n)
    v = rng.integers(0, 4, n).astype(np.float64)
    starts = np.cumsum(counts) - counts
    first, last = first_last(v, t, s, starts, counts)
    for got, latest in ((first, False), (last, True)):
        want = pick(v, t, s, starts, counts, latest=latest)
        assert got.value.tolist() == want.value.tolist()
        assert (got.time.tolist(), got.seq.tolist()) == (want.time.tolist(), want.seq.tolist())

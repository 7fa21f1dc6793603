"""Window aggregation throughput on one core: ours vs the bare limit vs a naive loop.

    python -m bench.aggregate [--readings 1000000] [--series 10000] [--repeat 5]

Same readings for all, in one run:
- ours: `cloud.windows.group_stats` - count, min, max, sum, mean, stddev, exact p50/p95,
  first, last per (series, window);
- bare: the limit of a vectorised group-by - one stable argsort of the (series, window)
  key and `reduceat`s for count/min/max/sum only;
- lexsort (for reference): a two-key `np.lexsort` by (key, value), then percentiles;
- naive: a per-reading Python loop into a dict (count/min/max/sum/first/last, no
  percentiles: it would only get slower).
Prints readings/s for each and the ratios (ours/bare, ours/naive); `--json` for a machine
readable line.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from cloud.windows import group_stats, window_index

WIDTH_NS = 10 * 10**9


def make_readings(n: int, series: int, seed: int = 1) -> dict[str, Any]:
    """n readings spread over `series` series and one minute of event time, shuffled."""
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000 * 10**9
    return {
        "series": rng.integers(0, series, n).astype(np.uint32),
        "time_ns": t0 + rng.integers(0, 60 * 10**9, n),
        "seq": np.arange(n, dtype=np.int64),
        "value": rng.normal(20.0, 5.0, n),
    }


def ours(r: dict[str, Any]) -> int:
    stats = group_stats(
        r["series"], window_index(r["time_ns"], WIDTH_NS), r["time_ns"], r["seq"], r["value"]
    )
    return len(stats)


def bare(r: dict[str, Any]) -> int:
    window = window_index(r["time_ns"], WIDTH_NS)
    w0 = int(window.min())
    key = r["series"].astype(np.int64) * (int(window.max()) - w0 + 1) + (window - w0)
    order = np.argsort(key, kind="stable")
    k = key[order]
    v: npt.NDArray[np.float64] = r["value"][order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    counts = np.diff(np.r_[starts, k.shape[0]])
    np.minimum.reduceat(v, starts)
    np.maximum.reduceat(v, starts)
    np.add.reduceat(v, starts)
    return int(counts.shape[0])


def lexsort(r: dict[str, Any]) -> int:
    """For reference: the textbook way to exact percentiles, a two-key lexsort per batch."""
    window = window_index(r["time_ns"], WIDTH_NS)
    w0 = int(window.min())
    key = r["series"].astype(np.int64) * (int(window.max()) - w0 + 1) + (window - w0)
    order = np.lexsort((r["value"], key))
    k = key[order]
    v: npt.NDArray[np.float64] = r["value"][order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    counts = np.diff(np.r_[starts, k.shape[0]])
    np.add.reduceat(v, starts)
    for q in (0.5, 0.95):
        v[starts + np.floor((counts - 1) * q).astype(np.int64)]
    return int(counts.shape[0])


def naive(r: dict[str, Any]) -> int:
    groups: dict[tuple[int, int], list[Any]] = {}
    for s, t, q, v in zip(
        r["series"].tolist(),
        r["time_ns"].tolist(),
        r["seq"].tolist(),
        r["value"].tolist(),
        strict=True,
    ):
        key = (s, t // WIDTH_NS)
        g = groups.get(key)
        if g is None:
            groups[key] = [1, v, v, v, (t, q, v), (t, q, v)]
            continue
        g[0] += 1
        if v < g[1]:
            g[1] = v
        if v > g[2]:
            g[2] = v
        g[3] += v
        if (t, q) < g[4][:2]:
            g[4] = (t, q, v)
        if (t, q) > g[5][:2]:
            g[5] = (t, q, v)
    return len(groups)


def best_rate(fn: Callable[[dict[str, Any]], int], r: dict[str, Any], repeat: int) -> float:
    """Readings per second of the fastest of `repeat` runs (least disturbed by neighbours)."""
    n = int(r["value"].shape[0])
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(r)
        best = min(best, time.perf_counter() - t)
    return n / best


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--series", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = make_readings(args.readings, args.series)
    assert ours(r) == bare(r) == lexsort(r) == naive(r), "they disagree on the window count"
    result = {
        "readings": float(args.readings),
        "ours_per_s": best_rate(ours, r, args.repeat),
        "bare_per_s": best_rate(bare, r, args.repeat),
        "lexsort_per_s": best_rate(lexsort, r, args.repeat),
        "naive_per_s": best_rate(naive, r, max(1, args.repeat // 2)),
    }
    result["ours_vs_bare"] = result["ours_per_s"] / result["bare_per_s"]
    result["ours_vs_naive"] = result["ours_per_s"] / result["naive_per_s"]
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print(f"{args.readings:,} readings in {args.series:,} series, 10 s windows, one core")
        for name in ("ours", "bare", "lexsort", "naive"):
            print(f"  {name:7s} {result[name + '_per_s'] / 1e6:7.2f} M readings/s")
        print(f"  ours / bare  = {result['ours_vs_bare']:.2f}  (target >= 0.5)")
        print(f"  ours / naive = {result['ours_vs_naive']:.1f}  (target >= 5)")
    return result


if __name__ == "__main__":
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    main()

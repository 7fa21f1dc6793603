"""Window partials equal a direct per-reading computation, whatever the batch split/order."""

from __future__ import annotations

import numpy as np

from cloud.windows import WindowKey, WindowState, merge_into, partials
from gateway import codec

WIDTH = 10 * 10**9


def _random_readings(rng: np.random.Generator, n: int) -> list[tuple[str, str, float, int, int]]:
    out = []
    seqs: dict[str, int] = {}
    for _ in range(n):
        dev = f"d{rng.integers(0, 4)}"
        seqs[dev] = seqs.get(dev, 0) + 1
        out.append(
            (
                dev,
                ["t", "h"][rng.integers(0, 2)],
                float(rng.normal(20, 5)),
                int(1_700_000_000 * 10**9 + rng.integers(0, 60 * 10**9)),
                seqs[dev],
            )
        )
    return out


def _batch(rows: list[tuple[str, str, float, int, int]]) -> codec.Batch:
    b = codec.ColumnBuilder("s", "a", "id")
    for dev, metric, value, t, seq in rows:
        b.add(dev, metric, "u", value, t, seq)
    return b.build()


def _direct(rows: list[tuple[str, str, float, int, int]]) -> dict[WindowKey, dict[str, float]]:
    groups: dict[WindowKey, list[tuple[int, int, float]]] = {}
    for dev, metric, value, t, seq in rows:
        key = WindowKey("s", dev, metric, t - t % WIDTH)
        groups.setdefault(key, []).append((t, seq, value))
    out = {}
    for key, items in groups.items():
        vals = [v for _, _, v in items]
        out[key] = {
            "count": len(vals),
            "min": min(vals),
            "max": max(vals),
            "mean": sum(vals) / len(vals),
            "last": max(items)[2],
        }
    return out


def test_partials_merged_in_any_order_equal_direct_computation() -> None:
    rng = np.random.default_rng(7)
    rows = _random_readings(rng, 2000)
    expected = _direct(rows)
    state: dict[WindowKey, WindowState] = {}
    order = rng.permutation(len(rows))
    shuffled = [rows[i] for i in order]
    for chunk in np.array_split(np.arange(len(rows)), 13):
        merge_into(state, partials(_batch([shuffled[i] for i in chunk]), WIDTH))
    assert state.keys() == expected.keys()
    for key, want in expected.items():
        got = state[key]
        assert got.count == want["count"]
        assert (got.min, got.max, got.last) == (want["min"], want["max"], want["last"])
        assert abs(got.mean - want["mean"]) <= 1e-12 * max(1.0, abs(want["mean"]))


def test_window_boundaries_are_half_open() -> None:
    t0 = 1_700_000_000 * 10**9
    t0 -= t0 % WIDTH
    parts = partials(
        _batch(
            [
                ("d", "t", 1.0, t0, 1),
                ("d", "t", 2.0, t0 + WIDTH - 1, 2),
                ("d", "t", 3.0, t0 + WIDTH, 3),
            ]
        ),
        WIDTH,
    )
    assert {k.start_ns: v.count for k, v in parts.items()} == {t0: 2, t0 + WIDTH: 1}

"""Tumbling-window aggregation: pure functions over decoded batch columns (no I/O).

A batch is grouped by (series, window start) in one vectorised pass; the per-group partial
results are merged into `WindowState`s. "last" is the value with the greatest
(event time, seq), so the result does not depend on the order batches arrive in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.codec import Batch


@dataclass(frozen=True, slots=True)
class WindowKey:
    site: str
    device: str
    metric: str
    start_ns: int


@dataclass(slots=True)
class WindowState:
    unit: str
    count: int
    min: float
    max: float
    sum: float
    last_time_ns: int
    last_seq: int
    last: float

    def merge(self, other: WindowState) -> None:
        self.count += other.count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.sum += other.sum
        if (other.last_time_ns, other.last_seq) > (self.last_time_ns, self.last_seq):
            self.last_time_ns, self.last_seq, self.last = (
                other.last_time_ns,
                other.last_seq,
                other.last,
            )

    @property
    def mean(self) -> float:
        return self.sum / self.count


def window_start(time_ns: npt.NDArray[np.int64], width_ns: int) -> npt.NDArray[np.int64]:
    starts: npt.NDArray[np.int64] = time_ns - np.mod(time_ns, width_ns)
    return starts


def partials(batch: Batch, width_ns: int) -> dict[WindowKey, WindowState]:
    """Aggregate one batch into per-(series, window) partial states."""
    n = len(batch)
    if n == 0:
        return {}
    starts = window_start(batch.time_ns, width_ns)
    # Sort by (window, series, time, seq): each group is contiguous, its last row is "last".
    order = np.lexsort((batch.seq, batch.time_ns, batch.series_index, starts))
    s_starts = starts[order]
    s_series = batch.series_index[order]
    boundary = np.empty(n, dtype=bool)
    boundary[0] = True
    boundary[1:] = (s_starts[1:] != s_starts[:-1]) | (s_series[1:] != s_series[:-1])
    first = np.flatnonzero(boundary)
    last = np.append(first[1:], n) - 1
    values = batch.value[order]
    counts = np.diff(np.append(first, n))
    mins = np.minimum.reduceat(values, first)
    maxs = np.maximum.reduceat(values, first)
    sums = np.add.reduceat(values, first)
    times = batch.time_ns[order]
    seqs = batch.seq[order]
    out: dict[WindowKey, WindowState] = {}
    for g in range(first.shape[0]):
        device, metric, unit = batch.series[int(s_series[first[g]])]
        key = WindowKey(batch.site, device, metric, int(s_starts[first[g]]))
        out[key] = WindowState(
            unit=unit,
            count=int(counts[g]),
            min=float(mins[g]),
            max=float(maxs[g]),
            sum=float(sums[g]),
            last_time_ns=int(times[last[g]]),
            last_seq=int(seqs[last[g]]),
            last=float(values[last[g]]),
        )
    return out


def merge_into(state: dict[WindowKey, WindowState], parts: dict[WindowKey, WindowState]) -> None:
    for key, part in parts.items():
        cur = state.get(key)
        if cur is None:
            state[key] = part
        else:
            cur.merge(part)

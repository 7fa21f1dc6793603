"""The live view of one window width: the values of each series' newest open window,
kept grouped by series and sorted between updates, so an update costs a radix grouping
of the new readings, a sort of each series' block (small sorts of mostly sorted data)
and the statistics; only the values are kept, not the readings' other columns.

Exact: the statistics equal `group_stats` of the same readings. The sums and percentiles
run over the same value-sorted groups; first and last (`windows.pick`) are kept per
series and combined with those of the new readings, which gives the pick of the whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cloud.windows import (
    F64,
    I64,
    U32,
    GroupStats,
    Pick,
    better,
    first_last,
    merge_runs,
    sort_within_groups,
    stable_small_argsort,
    stats_of_sorted,
    window_index,
)

NO_WINDOW = np.iinfo(np.int64).min  # a series the view shows nothing of
Mask = npt.NDArray[np.bool_]


def _no_pick(n: int) -> Pick:
    return Pick(np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.int64))


@dataclass(slots=True)
class NewRows:
    """Held rows the view has not seen yet (views of the width's columns)."""

    sid: U32
    time: I64
    seq: I64
    value: F64

    def take(self, mask: Mask) -> NewRows:
        return NewRows(self.sid[mask], self.time[mask], self.seq[mask], self.value[mask])


@dataclass(slots=True)
class OpenView:
    """`value`: the readings shown, grouped by series id (ascending), each group sorted.
    Per series id: how many are shown (`count`), their window (`NO_WINDOW`: none) and
    the first and last reading among them."""

    value: F64 = field(default_factory=lambda: np.empty(0, np.float64))
    count: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    win: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    first: Pick = field(default_factory=lambda: _no_pick(0))
    last: Pick = field(default_factory=lambda: _no_pick(0))
    seen: int = 0  # the width's held rows [0, seen) were considered

    def _grow(self, n_series: int) -> None:
        old = self.win.shape[0]
        if old >= n_series:
            return
        size = max(n_series, 2 * old)
        win = np.full(size, NO_WINDOW, dtype=np.int64)
        win[:old] = self.win
        count = np.zeros(size, dtype=np.int64)
        count[:old] = self.count
        self.win, self.count = win, count
        self.first, self.last = _grown(self.first, size), _grown(self.last, size)

    def update(self, new: NewRows, width_ns: int, watermark: int, n_series: int) -> GroupStats:
        """Take the new rows; the statistics of each series' newest open window.

        A held row the view has seen but does not hold was in a closed window or an older
        one than its series' newest then, so it cannot be in the newest open window now:
        the view's rows and the new ones are all that can be."""
        self._grow(n_series)
        new_win = window_index(new.time, width_ns)
        open_new = (new_win + 1) * width_ns > watermark
        shown = self.win[:n_series]
        shown_open = (shown != NO_WINDOW) & ((shown + 1) * width_ns > watermark)
        newest = np.where(shown_open, shown, NO_WINDOW)
        np.maximum.at(newest, new.sid[open_new], new_win[open_new])
        kept = shown_open & (shown == newest)  # series whose shown rows stay
        count = self.count[:n_series]
        if not kept[count > 0].all():
            self.value = self.value[np.repeat(kept, count)]
            count[~kept] = 0
        self.win[:n_series] = newest
        take = open_new & (new_win == newest[new.sid])
        if take.any():
            self._merge(new.take(take), kept, n_series)
        return self._stats(n_series)

    def _merge(self, add: NewRows, kept: Mask, n_series: int) -> None:
        """Merge rows of the shown windows (`kept`: series whose old rows stay)."""
        order = stable_small_argsort(add.sid.astype(np.int64), n_series)
        counts = np.bincount(add.sid, minlength=n_series).astype(np.int64)
        groups = np.flatnonzero(counts)
        starts = (np.cumsum(counts) - counts)[groups]
        time, seq, value = add.time[order], add.seq[order], add.value[order]
        # First and last do not depend on the order within a group: picked before sorting.
        firsts, lasts = first_last(value, time, seq, starts, counts[groups])
        self.first = _combine(self.first, firsts, groups, kept, latest=False)
        self.last = _combine(self.last, lasts, groups, kept, latest=True)
        # Each series' block: its shown values (sorted), then its new ones, sorted on
        # their own (`sort_within_groups`: small sorts, in cache); then the two runs of
        # each block merged, so an update sorts what it adds, not everything shown.
        value = sort_within_groups(value, counts[groups])
        old = self.count[:n_series]
        total = old + counts
        block = np.cumsum(total) - total
        merged = np.empty(int(total.sum()), dtype=np.float64)
        at_old = block - (np.cumsum(old) - old)  # how far each series' shown values move
        merged[np.arange(self.value.shape[0]) + np.repeat(at_old, old)] = self.value
        at_new = block + old - (np.cumsum(counts) - counts)
        merged[np.arange(value.shape[0]) + np.repeat(at_new, counts)] = value
        both = np.flatnonzero((old > 0) & (counts > 0))
        merge_runs(merged, block[both], block[both] + total[both])
        self.value = merged
        old[:] = total

    def _stats(self, n_series: int) -> GroupStats:
        series = np.flatnonzero(self.count[:n_series])
        if series.shape[0] == 0:
            return GroupStats.empty()
        counts = self.count[series]
        starts = np.cumsum(counts) - counts
        first, last = self.first.at(series), self.last.at(series)
        return stats_of_sorted(series, self.win[series], starts, counts, self.value, first, last)


def _grown(p: Pick, size: int) -> Pick:
    out = _no_pick(size)
    n = p.value.shape[0]
    out.put(np.arange(n), p)
    return out


def _combine(mine: Pick, theirs: Pick, groups: I64, kept: Mask, *, latest: bool) -> Pick:
    """Per series in `groups`: `theirs` where the series held nothing kept or it is better."""
    take = ~kept[groups] | better(mine.at(groups), theirs, latest=latest)
    mine.put(groups[take], theirs.at(np.flatnonzero(take)))
    return mine

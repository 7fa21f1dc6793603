"""The live view of one window width: the readings of each series' newest open window,
kept sorted by (series, value) between updates, so an update costs a sort of the new
readings, one merge and the statistics, not a sort of everything the view holds.

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
    argsort_within_groups,
    better,
    pick,
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
    """`key` is `series + 1j * value`, sorted: numpy orders complex numbers by real, then
    imaginary part, so one column holds both. Per series id: the window shown
    (`NO_WINDOW`: none) and the first and last reading in it."""

    key: npt.NDArray[np.complex128] = field(default_factory=lambda: np.empty(0, np.complex128))
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
        self.win = win
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
        if self.key.shape[0] and not kept[self.key.real.astype(np.int64)].all():
            self.key = self.key[kept[self.key.real.astype(np.int64)]]
        self.win[:n_series] = newest
        take = open_new & (new_win == newest[new.sid])
        if take.any():
            self._merge(new.take(take), kept, n_series)
        return self._stats(n_series)

    def _merge(self, add: NewRows, kept: Mask, n_series: int) -> None:
        """Merge rows of the shown windows (`kept`: series whose old rows stay)."""
        order = stable_small_argsort(add.sid.astype(np.int64), n_series)
        counts = np.bincount(add.sid, minlength=n_series)
        order = order[argsort_within_groups(add.value[order], counts[counts > 0])]
        sid, value = add.sid[order].astype(np.int64), add.value[order]
        starts = np.flatnonzero(np.diff(sid, prepend=-1) != 0).astype(np.int64)
        groups, cnt = sid[starts], counts[counts > 0].astype(np.int64)
        firsts = pick(value, add.time[order], add.seq[order], starts, cnt, latest=False)
        lasts = pick(value, add.time[order], add.seq[order], starts, cnt, latest=True)
        self.first = _combine(self.first, firsts, groups, kept, latest=False)
        self.last = _combine(self.last, lasts, groups, kept, latest=True)
        key = sid + 1j * value
        if self.key.shape[0] == 0:
            self.key = key
            return
        pos = np.searchsorted(self.key, key) + np.arange(key.shape[0])
        merged = np.empty(self.key.shape[0] + key.shape[0], dtype=np.complex128)
        old = np.ones(merged.shape[0], dtype=bool)
        old[pos] = False
        merged[pos] = key
        merged[old] = self.key
        self.key = merged

    def _stats(self, n_series: int) -> GroupStats:
        n = self.key.shape[0]
        if n == 0:
            return GroupStats.empty()
        sid = self.key.real.astype(np.int64)
        starts = np.flatnonzero(np.diff(sid, prepend=-1) != 0).astype(np.int64)
        counts = np.diff(np.append(starts, n)).astype(np.int64)
        series = sid[starts]
        first, last = self.first.at(series), self.last.at(series)
        return stats_of_sorted(
            series, self.win[series], starts, counts, self.key.imag.copy(), first, last
        )


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

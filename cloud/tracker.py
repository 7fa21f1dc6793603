"""Which readings count, which windows to emit, what to checkpoint: pure, no I/O.

Every decision here is a function of the TELEMETRY stream read in sequence order, never of
wall-clock time or of how messages were fetched, so replaying the stream from a checkpoint
makes the same decisions (see `cloud/aggregator.py` for the order of durable steps):

- An agent's watermark W is the greatest event time among its readings so far.
- A reading of window [start, end) is accepted iff `end + lateness > W` (W as it was before
  the reading's message); otherwise it is late: counted and sent to the DLQ.
- A window is *closed* once `W >= end` and *final* once `W >= end + lateness`. A closed
  window is emitted whenever its content changed since it was last emitted, so a late
  reading within the lateness re-emits it; a final window's readings are dropped.
- An agent that has gone quiet (by wall clock, decided by the caller) has its open windows
  emitted as well; they stay revisable until final, so this changes no final result.

The state keeps every accepted reading until its window is final (exact percentiles need
all values). A checkpoint taken after message H records, per agent, its watermark W_H and
the first stream sequence still holding one of its non-final readings. A restart replays
from there up to H, dropping readings of windows final at H (already published, never to
change) and keeping the rest. No kept reading can have been late (its window was not final
even at H), so replaying with the watermark at W_H decides exactly as the first run did,
and the rebuilt windows hold exactly the readings they held before, whatever parts of
them had been published or acknowledged. Nothing relies on JetStream's dedupe window.

Idempotent: a reading that reaches TELEMETRY twice (a batch republished under another
`Nats-Msg-Id`, past JetStream's dedupe window, by another agent process...) counts once
in every window. A reading's identity is (series, event time, seq) when the device numbers
its readings; when it does not (seq -1), (series, event time, value, rank), where rank
counts the readings identical in all of these *within one message* (0, 1, ...): two equal
unnumbered readings sent in one message both count, and a second copy of that message adds
nothing. Two messages each carrying an equal unnumbered reading count it once: nothing can
tell such a reading from a copy. Each width keeps the first row of each identity among the
readings it holds (those of windows not yet final), in stream order, so a replay decides
the same; a copy arriving once a window is final is late for it (DLQ), as any reading is.

Summaries (the edge's `overflow = "downsample"`) are taken the same way, as cells held per
width beside the rows (cloud/summaries.py says where one goes, how it merges and what
counts as a copy): accepted iff the window it goes to is not final, each identity once,
dropped once that window is final, and their times move the watermark (a summary's last
reading) and the replay point (the stream sequence it came in), so a checkpoint needs
nothing more and a replay rebuilds them exactly as it rebuilds rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.openview import NewRows, OpenView
from cloud.records import IndexBounds, WindowRecord
from cloud.summaries import Cell, Held, HeldSummaries, WindowKey, identity, merge_cells, window_of
from cloud.windows import (
    I64,
    U32,
    GroupStats,
    dense_groups,
    group_stats,
    grouped_stats,
    window_index,
    window_label,
)
from gateway.codec import Batch, SeriesKey, Summary

F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
NO_TIME = -(1 << 63)
CHECKPOINT_VERSION = 1
_NO_ROWS = 1 << 62  # `WidthState.oldest_ns` when it holds nothing
_INTERNED = 256  # series tuples remembered per agent (`AgentState.intern`)
_COLUMNS = ("sid", "time", "seq", "value", "sseq", "ord")  # of `Rows`


@dataclass(slots=True)
class Rows:
    """Accepted readings of one agent that belong to windows not yet final."""

    sid: U32
    time: I64
    seq: I64
    value: F64
    sseq: I64  # the TELEMETRY stream sequence each reading came in
    ord: I64  # -1 for a numbered reading; else its rank among identical ones in its message

    @classmethod
    def empty(cls) -> Rows:
        i: I64 = np.empty(0, np.int64)
        return cls(np.empty(0, np.uint32), i, i, np.empty(0, np.float64), i, i)

    def __len__(self) -> int:
        return int(self.time.shape[0])

    def take(self, keep: Mask) -> Rows:
        return Rows(*(col[keep] for col in self.cols()))

    def tag(self) -> I64:
        """The reading's own number, or for an unnumbered one the bits of its value."""
        out: I64 = np.where(self.seq >= 0, self.seq, self.value.view(np.int64))
        return out

    def first_of_each(self) -> Mask:
        """True for the first row (in stream order) of each reading identity (see
        `Tracker`): a reading that reached TELEMETRY twice is kept once."""
        n = len(self)
        keep: Mask = np.ones(n, dtype=bool)
        if n < 2:
            return keep
        # Fast path: distinct hashes mean distinct identities; only equal ones are checked.
        if np.unique(self.identity_hash()).shape[0] == n:
            return keep
        return self._first_of_each_exact()

    def distinct(self) -> bool:
        """True only if no identity repeats among the rows (False may be a hash collision).

        Event times in increasing order (the usual message) prove it without hashing."""
        if _rises(self.time):
            return True
        return bool(np.unique(self.identity_hash()).shape[0] == len(self))

    def identity_hash(self) -> npt.NDArray[np.uint64]:
        """A hash of each row's reading identity: equal identities, equal hashes."""
        h = self.sid.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= self.time.view(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= self.tag().view(np.uint64) * np.uint64(0x94D049BB133111EB)
        h ^= self.ord.view(np.uint64)
        return h

    def _first_of_each_exact(self) -> Mask:
        n = len(self)
        keep: Mask = np.ones(n, dtype=bool)
        tag = self.tag()
        order = np.lexsort((np.arange(n), self.ord, tag, self.time, self.sid))
        cols = (self.sid[order], self.time[order], tag[order], self.ord[order])
        same = np.ones(n - 1, dtype=bool)
        for col in cols:
            same &= col[1:] == col[:-1]
        keep[order[1:][same]] = False  # sorted by stream position within equal identities
        return keep

    @classmethod
    def concat(cls, parts: list[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate(cols) for cols in zip(*(p.cols() for p in parts), strict=True)))

    def cols(self) -> tuple[Any, ...]:
        return (self.sid, self.time, self.seq, self.value, self.sseq, self.ord)

    def tail(self, start: int) -> Rows:
        return Rows(*(col[start:] for col in self.cols()))

    def head(self, stop: int) -> Rows:
        return Rows(*(col[:stop] for col in self.cols()))


def _rises(time: I64) -> bool:
    """True if the event times strictly increase (as an in-order device sends them)."""
    return time.shape[0] < 2 or bool((time[1:] > time[:-1]).all())


def _newest_time(batch: Batch, rising: bool) -> int:
    """The greatest event time in a message: of its readings and its summaries' last."""
    time = batch.time_ns
    newest = NO_TIME if not len(batch) else int(time[-1] if rising else time.max())
    if not batch.summaries:
        return newest
    return max([newest, *(x.last_ns for x in batch.summaries)])


def occurrences(sid: U32, time: I64, seq: I64, value: F64) -> I64:
    """`Rows.ord` of one message's readings: -1 if numbered; else 0 for the first of the
    readings identical in (series, time, value) within the message, 1 for the second..."""
    out: I64 = np.full(sid.shape[0], -1, dtype=np.int64)
    loose = np.flatnonzero(seq < 0)
    if loose.shape[0] == 0:
        return out
    bits = value[loose].view(np.int64)
    order = np.lexsort((loose, bits, time[loose], sid[loose]))
    s, t, b = sid[loose][order], time[loose][order], bits[order]
    new = np.ones(order.shape[0], dtype=bool)
    new[1:] = (s[1:] != s[:-1]) | (t[1:] != t[:-1]) | (b[1:] != b[:-1])
    run_start = np.maximum.accumulate(np.where(new, np.arange(order.shape[0]), 0))
    out[loose[order]] = np.arange(order.shape[0]) - run_start
    return out


@dataclass(slots=True)
class WidthState:
    """The rows one width holds: deduplicated ones in growing columns (appended in
    place, so a fetch costs what it adds, not what the worker holds), then parts not yet
    deduplicated, merged in when the rows are next needed."""

    width_s: int
    _buf: Rows = field(default_factory=Rows.empty)  # capacity; rows [0, _n) are held
    _n: int = 0
    _pending: list[Rows] = field(default_factory=list)  # to deduplicate against the held
    _pending_n: int = 0  # rows in `_pending` (`len` is asked often, and parts are many)
    _checked: bool = True  # every pending message is known to hold no copy (see `add`)
    emitted: dict[tuple[int, int], int] = field(default_factory=dict)  # (sid, window) -> count
    live_dirty: bool = False
    duplicates: int = 0  # readings dropped as already held (the same identity)
    _hashes: npt.NDArray[np.uint64] | None = None  # sorted identity hashes of the held rows
    view: OpenView = field(default_factory=OpenView)
    oldest_ns: int = _NO_ROWS  # the earliest event time held (copies included)
    oldest_sseq: int = _NO_ROWS  # the first stream seq held (a copy comes after its original)
    summaries: HeldSummaries = field(default_factory=HeldSummaries)

    @property
    def width_ns(self) -> int:
        return self.width_s * 1_000_000_000

    def add(self, rows: Rows, new: bool, oldest: tuple[int, int] | None = None) -> None:
        """Take rows of one message; `new`: none can be a copy of a row held here or of
        another among them (`AgentState.news` proves it for most messages); `oldest`:
        their earliest event time and stream seq, if known.

        Kept in `_pending` until the rows are next needed (most of a wide width's are
        not, until its windows close). While every pending message is new (`_checked`),
        they are then appended without any comparison; otherwise all go through the
        exact check."""
        self._pending.append(rows)
        self._pending_n += len(rows)
        self._checked = self._checked and new
        time, sseq = oldest or (int(rows.time.min()), int(rows.sseq.min()))
        self.oldest_ns = min(self.oldest_ns, time)
        self.oldest_sseq = min(self.oldest_sseq, sseq)

    def _append(self, parts: list[Rows]) -> None:
        """Append the parts to the held rows: one copy per column for all of them."""
        n = self._n
        add = sum(len(part) for part in parts)
        if n + add > len(self._buf):
            self._grow(max(n + add + (n + add) // 4, 1024))
        columns = zip(*(part.cols() for part in parts), strict=True)
        for mine, theirs in zip(self._buf.cols(), columns, strict=True):
            np.concatenate(theirs, out=mine[n : n + add])
        self._n = n + add

    def _grow(self, capacity: int) -> None:
        """Make room for `capacity` rows, in place where nothing else refers to the columns.

        In place, `ndarray.resize` is a `realloc` (an `mremap` for large columns): the held
        rows are neither copied nor moved to fresh pages, and a growth by a quarter costs
        no more than a doubling (fresh pages cost more than the copy on a VM)."""
        buf = self._buf
        try:
            for name in _COLUMNS:
                getattr(buf, name).resize(capacity, refcheck=True)
        except ValueError:  # a view or a shared column: copy the held rows instead
            n = self._n
            bigger = []
            for col in buf.cols():
                out = np.empty(capacity, dtype=col.dtype)
                out[:n] = col[:n]
                bigger.append(out)
            self._buf = Rows(*bigger)

    @property
    def rows(self) -> Rows:
        """The held rows (views: valid until `keep`; appends only write past them)."""
        if self._pending and self._checked:
            self._append(self._pending)
            self._hashes = None  # recomputed from the held rows if the exact check runs
        elif self._pending:
            merged = self._deduplicated()  # new columns: views handed out stay as they were
            self._buf, self._n = merged, len(merged)
        self._pending, self._pending_n, self._checked = [], 0, True
        n = self._n
        return Rows(*(col[:n] for col in self._buf.cols()))

    def _reset_oldest(self, rows: Rows) -> None:
        held = self.summaries
        self.oldest_ns = min(int(rows.time.min()) if len(rows) else _NO_ROWS, held.oldest_ns)
        self.oldest_sseq = min(int(rows.sseq.min()) if len(rows) else _NO_ROWS, held.oldest_sseq)

    def add_summary(self, sid: int, s: Summary, sseq: int) -> bool:
        """Hold summary `s` (of series `sid`) in its window; False if it is a copy."""
        held = Held(sid, window_of(s, self.width_ns), Cell.of(s), sseq)
        if not self.summaries.add(identity(sid, s), held):
            return False
        self.oldest_ns = min(self.oldest_ns, s.first_ns)
        self.oldest_sseq = min(self.oldest_sseq, sseq)
        self.live_dirty = True
        return True

    def cells(self, watermark: int, *, closed: bool, idle: bool = False) -> dict[WindowKey, Cell]:
        """The summaries held in closed windows (all of them if `idle`) or in open ones,
        merged per (series, window)."""
        if not len(self.summaries):
            return {}
        width = self.width_ns
        if closed:
            return self.summaries.windows(lambda w: idle or (w + 1) * width <= watermark)
        return self.summaries.windows(lambda w: (w + 1) * width > watermark)

    def drop_summaries(self, final: Mask | None, is_final: Callable[[int], bool]) -> set[WindowKey]:
        """Drop the summaries of final windows (and, by `final`, held rows); their keys."""
        gone = self.summaries.drop(is_final)
        if final is not None:
            self.keep(~final)  # resets the oldest times, summaries included
        elif gone:
            self._reset_oldest(self.rows)
        return gone

    def last_end(self) -> int:
        """The end of the newest window holding a reading or a summary (some are held)."""
        ends = [self.summaries.last_window()] if len(self.summaries) else []
        if len(self.rows):
            ends.append(int(window_index(self.rows.time, self.width_ns).max()))
        return (max(ends) + 1) * self.width_ns

    def keep(self, mask: Mask) -> None:
        """Keep only the held rows in `mask` (the rows of final windows are dropped).

        In place, in the same columns (already in memory: fresh pages cost more than the
        copy on a VM), so views of the held rows from before this call are invalid."""
        n = len(self.rows)
        kept = int(mask.sum())
        start = n - kept  # in an in-order stream the dropped rows are the first ones
        prefix = kept == 0 or bool(mask[start:].all())
        for col in self._buf.cols():
            col[:kept] = col[start:n] if prefix else col[:n][mask]
        self._n = kept
        self._hashes = None  # rows were dropped: recomputed from the held rows when needed
        # The view holds no row of a final window once it is updated again; the rows it
        # has seen are still the first `seen` ones.
        self.view.seen = int(mask[: self.view.seen].sum())
        self._reset_oldest(self.rows)  # summaries included

    def _deduplicated(self) -> Rows:
        """The held rows and the pending parts as one, each reading identity once. The
        held rows are already distinct: when the new parts' hashes are distinct and none
        is among the held rows' (kept sorted between calls), nothing is compared row by
        row."""
        held = Rows(*(col[: self._n] for col in self._buf.cols()))
        new = Rows.concat(self._pending)
        h_new = new.identity_hash()
        h_sorted = np.sort(h_new)
        distinct = bool((h_sorted[1:] != h_sorted[:-1]).all())
        merged = h_sorted
        if distinct and len(held):
            if self._hashes is None:
                self._hashes = np.sort(held.identity_hash())
            base = self._hashes
            at = np.searchsorted(base, h_sorted)
            found = base[np.minimum(at, base.shape[0] - 1)] == h_sorted
            distinct = not found.any()
            merged = np.insert(base, at, h_sorted)  # still sorted: a merge, not a sort
        if distinct:
            rows = Rows.concat([held, new])
            self._hashes = merged
        else:  # some identity repeats (or a hash collides): the exact comparison
            rows = Rows.concat([held, *self._pending])
            keep = rows.first_of_each()
            if not keep.all():
                self.duplicates += int((~keep).sum())
                rows = rows.take(keep)
            self._hashes = None
        return rows

    def __len__(self) -> int:
        """Rows and summaries held (0: this width holds nothing)."""
        return self._n + self._pending_n + len(self.summaries)


@dataclass(frozen=True, slots=True)
class _Closed:
    """The held rows of closed windows, grouped by (series, window) in key order."""

    in_closed: Mask  # over the held rows
    rows: Rows
    win: I64  # of each of `rows`
    inverse: I64  # group of each of `rows`
    k_sid: I64
    k_win: I64
    counts: I64


def _closed_rows(held: Rows, width: int, watermark: int, idle: bool) -> _Closed | None:
    """Group the held rows of closed windows (all windows when `idle`); None if none.

    Only closed windows can be emitted or become final: the open ones (most of what a
    worker holds, e.g. a whole minute of 1 min windows) are not grouped per fetch."""
    if not len(held):
        return None
    win = window_index(held.time, width)
    in_closed = np.ones(len(held), dtype=bool) if idle else (win + 1) * width <= watermark
    if not in_closed.any():
        return None
    rows = held
    if not in_closed.all():
        # In an in-order stream the closed windows' rows come first: views, no copies.
        head = int(np.argmin(in_closed))
        if in_closed[head:].any():
            rows, win = held.take(in_closed), win[in_closed]
        else:
            rows, win = held.head(head), win[:head]
    # Groups in (series, window) order, by a bincount when the key range allows.
    inverse, keys = dense_groups(rows.sid, win)
    counts = np.bincount(inverse, minlength=keys.shape[0])
    w0 = int(win.min())
    n_windows = int(win.max()) - w0 + 1
    return _Closed(in_closed, rows, win, inverse, keys // n_windows, keys % n_windows + w0, counts)


def _newest_only(
    stats: GroupStats, cells: dict[WindowKey, Cell]
) -> tuple[GroupStats, dict[WindowKey, Cell]]:
    """Of the open windows (raw groups and summary cells), the newest of each series: the
    only one the live view shows (see `Tracker._open_view`)."""
    newest: dict[int, int] = {}
    keys = list(zip(stats.series.tolist(), stats.window.tolist(), strict=True))
    for s, w in [*keys, *cells]:
        newest[s] = max(newest.get(s, w), w)
    keep = np.array([newest[s] == w for s, w in keys], dtype=bool)
    return stats.take(keep), {k: c for k, c in cells.items() if newest[k[0]] == k[1]}


def _stat_rows(stats: GroupStats) -> Iterator[tuple[Any, ...]]:
    """Per group: series, window, count, min, max, sum, mean, stddev, p50, p95, first,
    last, first_ns, last_ns, as Python numbers (one `tolist` per column)."""
    columns = (
        stats.series, stats.window, stats.count, stats.min, stats.max, stats.sum,
        stats.mean, stats.std, stats.p50, stats.p95, stats.first, stats.last,
        stats.first_ns, stats.last_ns,
    )  # fmt: skip
    return zip(*(col.tolist() for col in columns), strict=True)


@dataclass(frozen=True, slots=True)
class _RecordMaker:
    """Builds the window records of one agent and width."""

    agent: AgentState
    label: str
    width_ns: int
    closed: bool

    def __call__(
        self,
        key: WindowKey,
        count: int,
        mn: float,
        mx: float,
        total: float,
        mean: float,
        std: float,
        p50: float,
        p95: float,
        first: float,
        last: float,
        summarised: int = 0,
    ) -> WindowRecord:
        sid, win = key
        device, metric, unit = self.agent.series[sid]
        return WindowRecord(
            site=self.agent.site,
            device=device,
            metric=metric,
            unit=unit,
            window=self.label,
            start_ns=win * self.width_ns,
            end_ns=(win + 1) * self.width_ns,
            count=count,
            min=mn,
            max=mx,
            sum=total,
            mean=mean,
            stddev=std,
            p50=p50,
            p95=p95,
            first=first,
            last=last,
            closed=self.closed,
            summarised=summarised,
        )

    def many(self, stats: GroupStats) -> list[WindowRecord]:
        """A record per group of `stats`."""
        return [self((sid, win), *row) for sid, win, *row, _f, _l in _stat_rows(stats)]

    def of_cell(
        self, key: WindowKey, c: Cell, spread: tuple[float, float, float], summarised: int
    ) -> WindowRecord:
        """From merged statistics; `spread` is (stddev, p50, p95) of the raw readings."""
        std, p50, p95 = spread
        return self(
            key, c.count, c.min, c.max, c.sum, c.mean, std, p50, p95, c.first[1], c.last[1],
            summarised,
        )  # fmt: skip


@dataclass(slots=True)
class Replay:
    """What a checkpoint says about one agent: replay from `from_seq` up to `until`."""

    from_seq: int | None
    final_wm: int  # the agent's watermark at the checkpoint


@dataclass(slots=True)
class AgentState:
    site: str
    watermark: int = NO_TIME
    series: list[SeriesKey] = field(default_factory=list)
    series_ids: dict[SeriesKey, int] = field(default_factory=dict)
    widths: list[WidthState] = field(default_factory=list)
    replay: Replay | None = None
    dirty: bool = False  # took readings since `due` last looked
    flushed: bool = False  # open windows emitted because the agent went quiet

    newest: I64 = field(default_factory=lambda: np.empty(0, np.int64))  # per series id
    # The ids of a message's series tuple: an agent sends the same few tuples again and
    # again, and one dict lookup of the tuple costs less than one per series.
    interned: dict[tuple[SeriesKey, ...], U32] = field(default_factory=dict)

    def intern(self, series: tuple[SeriesKey, ...]) -> U32:
        known = self.interned.get(series)
        if known is not None:
            return known
        if len(self.interned) >= _INTERNED:
            self.interned.clear()
        out = self.interned[series] = self._intern(series)
        out.flags.writeable = False
        return out

    def _intern(self, series: tuple[SeriesKey, ...]) -> U32:
        out = np.empty(len(series), dtype=np.uint32)
        for i, key in enumerate(series):
            sid = self.series_ids.get(key)
            if sid is None:
                sid = self.series_ids[key] = len(self.series)
                self.series.append(key)
            out[i] = sid
        if self.newest.shape[0] < len(self.series):
            grown = np.full(max(len(self.series), 2 * self.newest.shape[0]), NO_TIME, np.int64)
            grown[: self.newest.shape[0]] = self.newest
            self.newest = grown
        return out

    def news(self, rows: Rows, sids: U32, rising: bool) -> bool:
        """True only if no row can be a copy of a reading taken before or of another
        row (False may be wrong: a hash collision, or time going back). `sids`: the
        message's series (a superset of the rows').

        A reading's identity includes its event time, so a row later than every reading
        its series ever had cannot be a copy of one any width holds. Rows whose times
        rise (the usual message) are distinct, and all later if the first is later than
        every reading of the message's series. `rising`: `_rises(rows.time)`."""
        time = rows.time
        later = rising and int(time[0]) > int(self.newest[sids].max())
        later = later or bool((time > self.newest[rows.sid]).all())
        np.maximum.at(self.newest, rows.sid, time)
        return later and (rising or rows.distinct())


@dataclass(frozen=True, slots=True)
class Rejected:
    """Readings of one message that were not aggregated, with the reason."""

    reason: str  # "not_finite" | "late_<window>" (late for that window width)
    rows: Mask  # over the message's batch
    summaries: tuple[int, ...] = ()  # indexes into `batch.summaries`

    def readings(self, batch: Batch) -> int:
        """How many readings this rejects, those inside summaries included."""
        return int(self.rows.sum()) + sum(batch.summaries[i].count for i in self.summaries)


@dataclass(slots=True)
class Ingested:
    accepted: int = 0
    skipped: int = 0  # replayed readings already accounted for before the checkpoint
    rejected: list[Rejected] = field(default_factory=list)
    summaries: int = 0  # summaries merged (at some width), copies not counted
    summarised: int = 0  # the readings those summaries stand for


class Tracker:
    """Window state of every agent one aggregator worker owns."""

    def __init__(self, widths_s: list[int], lateness_s: float) -> None:
        if not widths_s or len(set(widths_s)) != len(widths_s):
            raise ValueError("window widths must be given, each once")
        self.widths_s = sorted(widths_s)
        self.lateness_ns = int(lateness_s * 1e9)
        self.agents: dict[str, AgentState] = {}
        self.replay_until = 0  # stream seq of the checkpoint; replayed up to here

    @property
    def duplicates(self) -> int:
        """Readings dropped so far as copies of held ones (counted at the finest width)."""
        total = 0
        for agent in self.agents.values():
            finest = agent.widths[0]
            _ = finest.rows  # deduplicates what was added since (`due` may not have looked)
            total += finest.duplicates + finest.summaries.duplicates
        return total

    def _agent(self, subject: str, site: str) -> AgentState:
        agent = self.agents.get(subject)
        if agent is None:
            agent = self.agents[subject] = AgentState(
                site, widths=[WidthState(w) for w in self.widths_s]
            )
        return agent

    def skips(self, subject: str, sseq: int) -> bool:
        """True if replaying message `sseq` would change nothing (no need to decode it)."""
        agent = self.agents.get(subject)
        if agent is None or agent.replay is None or sseq > self.replay_until:
            return False
        return agent.replay.from_seq is None or sseq < agent.replay.from_seq

    def ingest(self, subject: str, sseq: int, batch: Batch) -> Ingested:
        """Take one TELEMETRY message (stream sequence `sseq`) into the windows."""
        agent = self._agent(subject, batch.site)
        result = Ingested()
        n = len(batch)
        replaying = agent.replay is not None and sseq <= self.replay_until
        if (n == 0 and not batch.summaries) or self.skips(subject, sseq):
            result.skipped = n + sum(x.count for x in batch.summaries)
            return result
        finite = np.isfinite(batch.value)
        if not replaying and not finite.all():
            result.rejected.append(Rejected("not_finite", ~finite))
        before = agent.watermark
        rising = _rises(batch.time_ns)
        agent.watermark = max(before, _newest_time(batch, rising))
        sid = agent.intern(batch.series)
        agent.dirty = True
        agent.flushed = False
        whole = self._rows(sid, sseq, batch) if n else None
        new = whole is not None and agent.news(whole, sid, rising)  # so is any subset of it
        # The usual message: every reading finite and none late for any width, so all
        # are taken without a per-row mask.
        clean = n > 0 and not replaying and bool(finite.all())
        oldest = NO_TIME
        if clean:
            oldest = int(batch.time_ns[0] if rising else batch.time_ns.min())
        for ws in agent.widths:
            late: Mask | None = None
            width = ws.width_ns
            if (
                whole is not None
                and clean
                and (oldest // width + 1) * width + self.lateness_ns > before
            ):
                ws.add(whole, new, (oldest, sseq))
                ws.live_dirty = True
                result.accepted = n
            elif whole is not None:
                late = self._take_rows(agent, ws, whole, new, finite, before, replaying, result)
            late_s = self._take_summaries(agent, ws, sid, sseq, batch, before, replaying, result)
            if not replaying and ((late is not None and late.any()) or late_s):
                reason = f"late_{window_label(ws.width_s)}"
                rows = late if late is not None else np.zeros(n, dtype=bool)
                result.rejected.append(Rejected(reason, rows, late_s))
        if replaying:
            result.skipped = n - result.accepted
        return result

    @staticmethod
    def _rows(sid: U32, sseq: int, batch: Batch) -> Rows:
        row_sid = sid[batch.series_index]
        ord_ = occurrences(row_sid, batch.time_ns, batch.seq, batch.value)
        sseqs = np.full(len(batch), sseq, dtype=np.int64)
        return Rows(row_sid, batch.time_ns, batch.seq, batch.value, sseqs, ord_)

    def _take_rows(
        self,
        agent: AgentState,
        ws: WidthState,
        whole: Rows,
        new: bool,
        finite: Mask,
        before: int,
        replaying: bool,
        result: Ingested,
    ) -> Mask:
        """Hold the message's rows that are not late for this width; the late ones.
        `new`: `AgentState.news` of them."""
        end = (window_index(whole.time, ws.width_ns) + 1) * ws.width_ns
        late = finite & (end + self.lateness_ns <= before)
        keep = finite & ~late
        if replaying:
            assert agent.replay is not None
            keep &= end + self.lateness_ns > agent.replay.final_wm
        if keep.any():
            ws.add(whole if keep.all() else whole.take(keep), new)
            ws.live_dirty = True
        result.accepted = max(result.accepted, int(keep.sum()))
        return late

    def _take_summaries(
        self,
        agent: AgentState,
        ws: WidthState,
        sid: U32,
        sseq: int,
        batch: Batch,
        before: int,
        replaying: bool,
        result: Ingested,
    ) -> tuple[int, ...]:
        """Hold the message's summaries whose window (cloud/summaries.py) is not late for
        this width, as rows are; the indexes of the late ones."""
        late: list[int] = []
        merged = represented = 0
        for i, s in enumerate(batch.summaries):
            end = (window_of(s, ws.width_ns) + 1) * ws.width_ns + self.lateness_ns
            if end <= before:
                late.append(i)
                continue
            if replaying:
                assert agent.replay is not None
                if end <= agent.replay.final_wm:
                    continue  # its window was final at the checkpoint: already published
            if ws.add_summary(int(sid[s.series]), s, sseq):
                merged += 1
                represented += s.count
        result.summaries = max(result.summaries, merged)
        result.summarised = max(result.summarised, represented)
        return tuple(late)

    def due(self, idle: set[str], gone: frozenset[str] = frozenset()) -> list[WindowRecord]:
        """`due_indexed` without the bounds."""
        return [record for record, _ in self.due_indexed(idle, gone)]

    def due_indexed(
        self, idle: set[str], gone: frozenset[str] = frozenset()
    ) -> list[tuple[WindowRecord, IndexBounds]]:
        """Records of closed windows whose content changed since last emitted (and of all
        open windows of agents in `idle`); marks them emitted and drops final readings.
        Each comes with the `IndexBounds` its AGG message carries.

        Agents in `gone` (silent for long, by wall clock) have their watermark moved past
        every window they hold, so those windows become final: a dead agent must not pin
        the replay point of every later restart. The moved watermark is checkpointed like
        any other, so restarts after it decide as this run does."""
        out: list[tuple[WindowRecord, IndexBounds]] = []
        for subject, agent in self.agents.items():
            flush = subject in idle and not agent.flushed
            if subject in gone and any(len(ws) for ws in agent.widths):
                agent.watermark = max(agent.watermark, self._last_end(agent) + self.lateness_ns)
                agent.dirty = flush = True
            if not (agent.dirty or flush):
                continue
            for ws in agent.widths:
                if len(ws):
                    records = self._due_width(agent, ws, flush)
                    if records:
                        bounds = self._bounds(agent, ws, records)
                        out.extend((r, bounds) for r in records)
            agent.dirty = False
            agent.flushed = agent.flushed or flush
        return out

    def _bounds(
        self, agent: AgentState, ws: WidthState, records: list[WindowRecord]
    ) -> IndexBounds:
        """Why these bounds hold: a record is only ever emitted for a window holding a
        reading (so it starts at or before the watermark), and a reading is only accepted
        into a window that is not final at the watermark (so every later record starts
        after `watermark - width - lateness`, or is one of the windows held now)."""
        floor = min(r.start_ns for r in records)
        floor = min(floor, agent.watermark - ws.width_ns - self.lateness_ns)
        if len(ws.rows):
            held = int(ws.rows.time.min())
            floor = min(floor, held - held % ws.width_ns)
        if len(ws.summaries):  # a summary's window holds its first reading
            held = ws.summaries.oldest_ns
            floor = min(floor, held - held % ws.width_ns)
        return IndexBounds(floor, agent.watermark)

    @staticmethod
    def _last_end(agent: AgentState) -> int:
        return max(ws.last_end() for ws in agent.widths if len(ws))

    def _due_width(self, agent: AgentState, ws: WidthState, idle: bool) -> list[WindowRecord]:
        width, wm = ws.width_ns, agent.watermark
        if not idle and (ws.oldest_ns // width + 1) * width > wm:
            # No held window is closed: nothing to emit or drop, and the rows need not be
            # concatenated or deduplicated yet (the open 1 min / 1 h / 1 d windows, mostly).
            return []
        cells = ws.cells(wm, closed=True, idle=idle)
        held = ws.rows
        closed = _closed_rows(held, width, wm, idle)
        records: list[WindowRecord] = []
        drop: Mask | None = None
        if closed is not None:
            records = self._emit_rows(agent, ws, closed, cells)
            final = (closed.k_win + 1) * width + self.lateness_ns <= wm
            if final.any():
                drop = np.zeros(len(held), dtype=bool)
                drop[closed.in_closed] = final[closed.inverse]
                for s, w in zip(closed.k_sid[final], closed.k_win[final], strict=True):
                    ws.emitted.pop((int(s), int(w)), None)
        if cells:
            records += self._emit_cells(agent, ws, cells, closed)
        if drop is not None or cells:
            gone = ws.drop_summaries(drop, lambda w: (w + 1) * width + self.lateness_ns <= wm)
            for key in gone:
                ws.emitted.pop(key, None)
        return records

    def _emit_rows(
        self, agent: AgentState, ws: WidthState, closed: _Closed, cells: dict[WindowKey, Cell]
    ) -> list[WindowRecord]:
        """Records of the closed windows holding rows whose count (summaries included)
        changed since last emitted."""
        keys = list(zip(closed.k_sid.tolist(), closed.k_win.tolist(), strict=True))
        totals = closed.counts.tolist()
        if cells:
            totals = [
                n + (cells[k].count if k in cells else 0) for k, n in zip(keys, totals, strict=True)
            ]
        changed = np.array(
            [ws.emitted.get(k) != n for k, n in zip(keys, totals, strict=True)], dtype=bool
        )
        if not changed.any():
            return []
        if changed.all():  # the usual case: the groups of `closed` are those to emit
            rows = closed.rows
            stats = grouped_stats(
                closed.inverse, closed.k_sid, closed.k_win, rows.time, rows.seq, rows.value
            )
        else:
            mine = changed[closed.inverse]
            part = closed.rows.take(mine)
            stats = group_stats(part.sid, closed.win[mine], part.time, part.seq, part.value)
        merged = {}
        emitted = zip(stats.series.tolist(), stats.window.tolist(), strict=True)
        for k, n in zip(emitted, stats.count.tolist(), strict=True):
            cell = cells.get(k)
            if cell is not None:
                merged[k] = cell
            ws.emitted[k] = n + (cell.count if cell is not None else 0)
        return self.records(agent, ws, stats, closed=True, cells=merged)

    def _emit_cells(
        self,
        agent: AgentState,
        ws: WidthState,
        cells: dict[WindowKey, Cell],
        closed: _Closed | None,
    ) -> list[WindowRecord]:
        """Records of the closed windows holding only summaries, where they changed."""
        raw = set()
        if closed is not None:
            raw = set(zip(closed.k_sid.tolist(), closed.k_win.tolist(), strict=True))
        due = {k: c for k, c in cells.items() if k not in raw and ws.emitted.get(k) != c.count}
        for k, c in due.items():
            ws.emitted[k] = c.count
        return self.records(agent, ws, GroupStats.empty(), closed=True, cells=due) if due else []

    def live(self) -> list[WindowRecord]:
        """Records of the newest open window of each series, of every width that took
        readings since last asked."""
        out: list[WindowRecord] = []
        for agent in self.agents.values():
            for ws in agent.widths:
                if not ws.live_dirty or not len(ws):
                    continue
                ws.live_dirty = False
                stats = self._open_view(agent, ws) if len(ws.rows) else GroupStats.empty()
                cells = ws.cells(agent.watermark, closed=False)
                if cells:
                    stats, cells = _newest_only(stats, cells)
                if len(stats) or cells:
                    out.extend(self.records(agent, ws, stats, closed=False, cells=cells))
        return out

    def _open_view(self, agent: AgentState, ws: WidthState) -> GroupStats:
        """Update `ws.view` with the rows held since the last call; its statistics.

        Only the newest open window of a series is shown (`AGG_LATEST` has one key per
        series and width, and never goes back to an older one)."""
        held, view = ws.rows, ws.view
        new = held.tail(view.seen)
        view.seen = len(held)
        rows = NewRows(new.sid, new.time, new.seq, new.value)
        return view.update(rows, ws.width_ns, agent.watermark, len(agent.series))

    def records(
        self,
        agent: AgentState,
        ws: WidthState,
        stats: GroupStats,
        *,
        closed: bool,
        cells: dict[WindowKey, Cell] | None = None,
    ) -> list[WindowRecord]:
        """A record per group of `stats`; `cells` (summaries per (series, window)) merge
        into the group of their key, or make a record of their own where there is none:
        exact count, min, max, sum, mean, first and last; stddev and percentiles of the
        raw readings only (NaN without any), cloud/summaries.py."""
        make = _RecordMaker(agent, window_label(ws.width_s), ws.width_ns, closed)
        if not cells:  # the usual case, one record per group, built in one loop
            return make.many(stats)
        out: list[WindowRecord] = []
        merged: set[WindowKey] = set()
        for sid, win, *row, first_ns, last_ns in _stat_rows(stats):
            key = (sid, win)
            cell = cells.get(key)
            if cell is None:
                out.append(make(key, *row))
                continue
            count, mn, mx, total, _mean, std, p50, p95, first, last = row
            raw = Cell(
                count,
                total,
                mn,
                mx,
                (first_ns, first),
                (last_ns, last),
            )
            out.append(make.of_cell(key, merge_cells((raw, cell)), (std, p50, p95), cell.count))
            merged.add(key)
        for key, cell in cells.items():
            if key not in merged:
                out.append(make.of_cell(key, cell, (math.nan,) * 3, cell.count))
        return out

    @staticmethod
    def _oldest_open_seq(agent: AgentState) -> int | None:
        firsts = [ws.oldest_sseq for ws in agent.widths if len(ws)]
        return min(firsts) if firsts else None

    def checkpoint(self, last_seq: int) -> dict[str, Any]:
        """The state to resume from after every message up to `last_seq` was processed."""
        agents = {}
        for subject, agent in self.agents.items():
            oldest = self._oldest_open_seq(agent)
            agents[subject] = {
                "wm": agent.watermark,
                "from_seq": oldest,
                "site": agent.site,
            }
        return {
            "version": CHECKPOINT_VERSION,
            "last_seq": last_seq,
            "widths_s": self.widths_s,
            "lateness_ns": self.lateness_ns,
            "agents": agents,
        }

    def restore(self, ckpt: dict[str, Any]) -> int:
        """Load a checkpoint; return the stream sequence to replay from."""
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"unsupported checkpoint version {ckpt.get('version')!r}")
        if ckpt["widths_s"] != self.widths_s or ckpt["lateness_ns"] != self.lateness_ns:
            raise ValueError("checkpoint was written with other window settings")
        self.replay_until = int(ckpt["last_seq"])
        start = self.replay_until + 1
        for subject, a in ckpt["agents"].items():
            agent = self._agent(subject, a["site"])
            agent.replay = Replay(a["from_seq"], int(a["wm"]))
            agent.watermark = int(a["wm"])
            if a["from_seq"] is not None:
                start = min(start, int(a["from_seq"]))
        return start

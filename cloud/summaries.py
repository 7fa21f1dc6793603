"""Summaries (the edge's `overflow = "downsample"`) in the cloud's windows: pure, no I/O.

A summary (`gateway.codec.Summary`) stands for `count` readings of one series in
`[start_ns, start_ns + width_s)`: their count, sum, min, max and the first and last of
them with their times. The aggregator merges it into its windows as a `Cell`, exactly:

- **Merge.** count, min and max of a merge are those of the readings themselves; the sum
  is the correctly rounded sum (`math.fsum`) of the parts' sums, so the mean is
  `sum / count`; first and last are the readings with the smallest and greatest event
  time (on equal times the smaller value, whatever the order the parts came in). Raw
  readings of the same window enter the merge as one more cell.
- **Placement.** A summary goes to the window of width W holding its *first reading's*
  time (`first_ns`). A summary that lies wholly inside one window (a 1 min summary in a
  1 min, 1 h or 1 d window) is thus in the window it lies in, and that window's count,
  sum, min, max, mean, first and last are those of its readings, exactly. A summary wider
  than the window (a 10 min summary in 10 s windows) cannot be split (the readings inside
  it are gone), so it goes whole to the window of its first reading: that window's
  statistics are exact over what it received (its raw readings and whole summaries) and
  the later windows it spans receive none of its readings. `WindowRecord.summarised` says
  how many of a window's `count` came from summaries.
- **Percentiles.** Exact percentiles need every value; a summary has none. `p50`, `p95`
  and `stddev` of a window with `summarised > 0` are those of its raw readings only, so
  approximate; NaN (JSON `null`) when the window holds only summaries.
- **Counted once.** As raw readings are (cloud/tracker.py), a summary is identified by
  what it says, not by the message it came in: (series, start, width, count, min, max,
  sum, first and last with their times). A width keeps the first summary of each identity
  among those it holds (its windows not yet final), so a message that reaches TELEMETRY
  twice (republished under another `Nats-Msg-Id`, after JetStream's dedupe window) adds
  nothing the second time, and a replay from a checkpoint decides the same. Two distinct
  summaries equal in all of these would count once: nothing can tell one from a copy (as
  for two equal unnumbered readings in two messages).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.codec import Summary

NS = 1_000_000_000
_NONE = 1 << 62  # `HeldSummaries.oldest_*` when nothing is held

TimedValue = tuple[int, float]  # (event time ns, value)
SummaryId = tuple[int, int, int, int, float, float, float, int, float, int, float]
WindowKey = tuple[int, int]  # (series id, window index)


@dataclass(frozen=True, slots=True)
class Cell:
    """Exact mergeable statistics of some readings of one series."""

    count: int
    sum: float
    min: float
    max: float
    first: TimedValue  # the earliest reading (smaller value on equal times)
    last: TimedValue  # the latest reading (smaller value on equal times)

    @classmethod
    def of(cls, s: Summary) -> Cell:
        return cls(s.count, s.sum, s.min, s.max, (s.first_ns, s.first), (s.last_ns, s.last))

    @property
    def mean(self) -> float:
        return self.sum / self.count

    def merge(self, other: Cell) -> Cell:
        return merge_cells((self, other))


def merge_cells(cells: Iterable[Cell]) -> Cell:
    """One cell for all of `cells` (at least one); the result does not depend on order."""
    parts = list(cells)
    if not parts:
        raise ValueError("merge_cells needs at least one cell")
    return Cell(
        count=sum(c.count for c in parts),
        sum=math.fsum(c.sum for c in parts),
        min=min(c.min for c in parts),
        max=max(c.max for c in parts),
        first=min(c.first for c in parts),
        last=max((c.last for c in parts), key=lambda tv: (tv[0], -tv[1])),
    )


def window_of(s: Summary, width_ns: int) -> int:
    """The index of the window (`[k*width, (k+1)*width)`) a summary goes to: the one
    holding its first reading, which is also the one it lies in when it fits in one."""
    return s.first_ns // width_ns


def identity(sid: int, s: Summary) -> SummaryId:
    """What tells one summary from another (`sid`: the agent's series id)."""
    return (
        sid, s.start_ns, s.width_s, s.count, s.min, s.max, s.sum,
        s.first_ns, s.first, s.last_ns, s.last,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Held:
    """A summary placed in a window, with the TELEMETRY stream sequence it came in."""

    sid: int
    window: int
    cell: Cell
    sseq: int


@dataclass(slots=True)
class HeldSummaries:
    """The summaries one window width holds for its windows not yet final."""

    by_id: dict[SummaryId, Held] = field(default_factory=dict)
    duplicates: int = 0  # readings in summaries dropped as copies of held ones
    oldest_ns: int = _NONE  # the earliest first reading held
    oldest_sseq: int = _NONE  # the first stream sequence held

    def __len__(self) -> int:
        return len(self.by_id)

    def add(self, key: SummaryId, held: Held) -> bool:
        """Hold `held` unless a summary of the same identity is held (False: a copy)."""
        if key in self.by_id:
            self.duplicates += held.cell.count
            return False
        self.by_id[key] = held
        self.oldest_ns = min(self.oldest_ns, held.cell.first[0])
        self.oldest_sseq = min(self.oldest_sseq, held.sseq)
        return True

    def windows(self, pick: Callable[[int], bool]) -> dict[WindowKey, Cell]:
        """The held cells merged per (series, window), of the windows `pick` accepts."""
        groups: dict[WindowKey, list[Cell]] = {}
        for h in self.by_id.values():
            if pick(h.window):
                groups.setdefault((h.sid, h.window), []).append(h.cell)
        return {k: c[0] if len(c) == 1 else merge_cells(c) for k, c in groups.items()}

    def drop(self, final: Callable[[int], bool]) -> set[WindowKey]:
        """Drop the summaries of the windows `final` accepts; their (series, window)."""
        gone = {k: h for k, h in self.by_id.items() if final(h.window)}
        if not gone:
            return set()
        for k in gone:
            del self.by_id[k]
        held = self.by_id.values()
        self.oldest_ns = min((h.cell.first[0] for h in held), default=_NONE)
        self.oldest_sseq = min((h.sseq for h in held), default=_NONE)
        return {(h.sid, h.window) for h in gone.values()}

    def last_window(self) -> int:
        """The newest window holding a summary (some must be held)."""
        return max(h.window for h in self.by_id.values())

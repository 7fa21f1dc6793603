"""`overflow = "downsample"`: compact the oldest backlog into per-series summaries.

When the buffer is full, instead of dropping the oldest batches, the oldest ones are
replaced by ONE batch of summaries (gateway/codec.py `Summary`: count, min, max, sum, first
and last with their times), one per series and window of `width_s`: first per minute; if
that frees too little, the oldest minute summaries (and raw batches) are compacted again
per 10 minutes, then per hour, then per day. Summaries merge exactly: count, min, max,
first and last of a merge are those of the readings themselves; the sum is the correctly
rounded sum (`math.fsum`) of the parts' sums. Only when nothing more can be compacted does
the buffer drop the oldest batches (edge/buffer.py), counted as before.

Durable order: the summary batch is inserted and the batches it replaces are deleted in the
transaction of the commit that needed the room (edge/buffer.py `_make_room`), so after a
crash either the originals or the summary are there, never both or neither.

The summary batch takes the row of the oldest batch it replaces, so the uplink, which
sends by row, still sends the backlog oldest first (the cloud would count a summary sent
after newer readings as late). Only batches the uplink has not read in its current round
(`floor_row`) nor marked attempted are compacted: an acknowledgement still on its way for
an original must never delete the summary that took its row.

Accounting (edge/accounting.py): compacting raw readings adds them to `summarised:<source>`
in the same transaction; the summary batch's `sources` names each source with
`SUMMARY_MARK` appended, so that the buffer's existing paths count its publication
(`published:<source>:summarised`, not a term of the equation) and a drop of it
(`dropped:<source>:summarised:<reason>`, which moves it from summarised to dropped) without
knowing what a summary is.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from edge.errors import TamperedError
from gateway import codec
from gateway.codec import Batch, SeriesKey, Summary
from gateway.errors import CodecError

WIDTHS_S = (60, 600, 3600, 86400)
SUMMARY_MARK = ":summarised"  # appended to a source's name in a summary batch's `sources`
_NS = 1_000_000_000
_MIN_CHUNK_BYTES = 64 * 1024
# A summary batch is smaller than what it replaces, but its JSON header compresses less
# than readings do: bounding the chunk keeps it well under the cloud's 1 MiB max_payload.
_MAX_CHUNK_BYTES = 256 * 1024

OpenPayload = Callable[[bytes, int, str], bytes]  # stored, flags, batch_id -> encoded batch
SealPayload = Callable[[bytes, str], tuple[bytes, int]]  # encoded, batch_id -> stored, flags


@dataclass(slots=True)
class _Acc:
    """One summary being built: exact count, min, max; sum parts; first and last by key."""

    count: int
    min: float
    max: float
    parts: list[float]
    first: tuple[int, int, float]  # (time, seq, value): the smallest wins
    last: tuple[int, int, float]  # (time, seq, -value): the greatest wins

    def merge(self, other: _Acc) -> None:
        self.count += other.count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.parts.extend(other.parts)
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)


def summarise(batches: Sequence[Batch], width_s: int, batch_id: str) -> Batch:
    """The readings and summaries of `batches` (one site) as summaries per series and
    window of `width_s` seconds (a multiple of every summary's width). Pure."""
    if not batches:
        raise ValueError("summarise needs at least one batch")
    site = batches[0].site
    if any(b.site != site for b in batches):
        raise ValueError("summarise: every batch must be of one site")
    width_ns = width_s * _NS
    groups: dict[tuple[SeriesKey, int], _Acc] = {}
    for batch in batches:
        for key, acc in _batch_groups(batch, width_ns):
            if key in groups:
                groups[key].merge(acc)
            else:
                groups[key] = acc
    series = sorted({k[0] for k in groups})
    index = {s: i for i, s in enumerate(series)}
    summaries = tuple(
        Summary(
            series=index[s],
            start_ns=start,
            width_s=width_s,
            count=a.count,
            min=a.min,
            max=a.max,
            sum=math.fsum(a.parts),
            first_ns=a.first[0],
            first=a.first[2],
            last_ns=a.last[0],
            last=-a.last[2],
        )
        for (s, start), a in sorted(groups.items())
    )
    return _summary_batch(site, batches[0].agent, batch_id, tuple(series), summaries)


def _summary_batch(
    site: str,
    agent: str,
    batch_id: str,
    series: tuple[SeriesKey, ...],
    summaries: tuple[Summary, ...],
) -> Batch:
    empty_i = np.empty(0, np.int64)
    return Batch(
        site=site,
        agent=agent,
        batch_id=batch_id,
        series=series,
        time_ns=empty_i,
        value=np.empty(0, np.float64),
        seq=empty_i,
        series_index=np.empty(0, np.uint32),
        flags=np.empty(0, np.uint16),
        summaries=summaries,
    )


def _batch_groups(batch: Batch, width_ns: int) -> Iterable[tuple[tuple[SeriesKey, int], _Acc]]:
    for s in batch.summaries:
        if (s.width_s * _NS) > width_ns or width_ns % (s.width_s * _NS):
            raise ValueError(f"a {s.width_s} s summary does not fit a {width_ns // _NS} s one")
        start = s.start_ns - s.start_ns % width_ns
        first = (s.first_ns, 0, s.first)
        last = (s.last_ns, 0, -s.last)
        yield (batch.series[s.series], start), _Acc(s.count, s.min, s.max, [s.sum], first, last)
    if len(batch):
        yield from _reading_groups(batch, width_ns)


def _reading_groups(batch: Batch, width_ns: int) -> Iterable[tuple[tuple[SeriesKey, int], _Acc]]:
    """Group the batch's readings by (series, window) with one sort (numpy), then build
    each group's accumulator from its slice."""
    window = np.floor_divide(batch.time_ns, width_ns)
    order = np.lexsort((batch.seq, batch.time_ns, window, batch.series_index))
    sid, win = batch.series_index[order], window[order]
    t, q, v = batch.time_ns[order], batch.seq[order], batch.value[order]
    cut = np.flatnonzero((np.diff(sid) != 0) | (np.diff(win) != 0)) + 1
    starts = np.concatenate(([0], cut)).tolist()
    ends = np.concatenate((cut, [len(order)])).tolist()
    for a, b in zip(starts, ends, strict=True):
        vals = v[a:b]
        # first: smallest (time, seq), ties by smallest value; last likewise at the top
        first = min((int(t[i]), int(q[i]), float(v[i])) for i in range(a, b) if t[i] == t[a])
        last = max((int(t[i]), int(q[i]), -float(v[i])) for i in range(a, b) if t[i] == t[b - 1])
        acc = _Acc(
            b - a, float(vals.min()), float(vals.max()), [math.fsum(vals.tolist())], first, last
        )
        yield (batch.series[int(sid[a])], int(win[a]) * width_ns), acc


@dataclass(frozen=True, slots=True)
class _Row:
    row: int
    batch_id: str
    created_ns: int
    stored_bytes: int
    sources: dict[str, int]
    batch: Batch

    @property
    def width_s(self) -> int:
        """0 for a batch of readings; else its (coarsest) summary width."""
        return max((s.width_s for s in self.batch.summaries), default=0)


@dataclass(slots=True)
class Compaction:
    """What `make_room` did inside the caller's transaction."""

    freed: int = 0  # stored bytes
    summarised: Counter[str] | None = None  # raw readings newly summarised, by source
    summaries: int = 0  # summary batches written


def make_room(
    db: sqlite3.Connection,
    need: int,
    *,
    floor_row: int,
    instance: str,
    open_payload: OpenPayload,
    seal: SealPayload,
) -> Compaction:
    """Compact the oldest backlog until `need` stored bytes are freed or nothing more can be
    compacted; runs inside the caller's open transaction on `db`."""
    done = Compaction(summarised=Counter())
    for width_s in WIDTHS_S:
        while done.freed < need:
            target = min(max(4 * (need - done.freed), _MIN_CHUNK_BYTES), _MAX_CHUNK_BYTES)
            chunk = _candidates(db, width_s, floor_row, target, open_payload)
            gained = _compact(db, chunk, width_s, instance, seal, done) if chunk else 0
            if gained <= 0:
                break
        if done.freed >= need:
            break
    return done


def _candidates(
    db: sqlite3.Connection, width_s: int, floor_row: int, target: int, open_payload: OpenPayload
) -> list[_Row]:
    """The oldest batches finer than `width_s`, of the oldest one's site, not attempted and
    past `floor_row`, until their stored bytes reach `target`."""
    cursor = db.execute(
        "SELECT b.id, batch_id, created_ns, bytes, payload, sources, compressed, content_type"
        " FROM batches AS b LEFT JOIN attempted AS a ON a.id = b.id"
        " WHERE b.id > ? AND a.id IS NULL ORDER BY b.id",
        (floor_row,),
    )
    out: list[_Row] = []
    total = 0
    try:
        for row, batch_id, created, size, stored, sources, flags, kind in cursor:
            if kind == codec.SUMMARY_CONTENT_TYPE and summary_width(batch_id) >= width_s:
                continue  # told by its id: a full buffer of summaries is not decoded again
            try:
                batch = codec.decode(open_payload(bytes(stored), flags, batch_id))
            except (TamperedError, CodecError):
                continue  # left for the uplink, which quarantines or dead-letters it
            r = _Row(row, batch_id, created, size, orjson.loads(sources), batch)
            if r.width_s >= width_s or (out and batch.site != out[0].batch.site):
                continue
            out.append(r)
            total += size
            if total >= target:
                break
    finally:
        cursor.close()
    return out


def summary_id(agent: str, instance: str, row: int, width_s: int) -> str:
    """A summary batch's id (its Nats-Msg-Id): unique, as the row of the oldest batch it
    replaces is never compacted again at the same width, and says its width."""
    return f"{agent}:{instance}:{row}.{width_s}s"


def summary_width(batch_id: str) -> int:
    tail = batch_id.rpartition(".")[2]
    return int(tail[:-1]) if tail.endswith("s") and tail[:-1].isdigit() else 0


def _compact(
    db: sqlite3.Connection,
    chunk: list[_Row],
    width_s: int,
    instance: str,
    seal: SealPayload,
    done: Compaction,
) -> int:
    """Replace `chunk` by one summary batch if that frees room; return the bytes freed."""
    first = chunk[0]
    batch_id = summary_id(first.batch.agent, instance, first.row, width_s)
    summary = summarise([r.batch for r in chunk], width_s, batch_id)
    stored, flags = seal(codec.encode(summary), batch_id)
    freed = sum(r.stored_bytes for r in chunk) - len(stored)
    if freed <= 0:
        return 0
    represented: Counter[str] = Counter()
    assert done.summarised is not None
    for r in chunk:
        for source, n in r.sources.items():
            if source.endswith(SUMMARY_MARK):
                represented[source] += n
            else:
                represented[source + SUMMARY_MARK] += n
                done.summarised[source] += n
    rows = [r.row for r in chunk]
    db.execute(f"DELETE FROM batches WHERE id IN ({','.join('?' * len(rows))})", rows)
    db.execute(
        "INSERT INTO batches(id, batch_id, content_type, created_ns, readings, bytes, payload,"
        " sources, compressed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            first.row,
            batch_id,
            codec.SUMMARY_CONTENT_TYPE,
            min(r.created_ns for r in chunk),
            sum(s.count for s in summary.summaries),
            len(stored),
            stored,
            orjson.dumps(dict(represented)),
            flags,
        ),
    )
    done.freed += freed
    done.summaries += 1
    return freed

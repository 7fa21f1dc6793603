"""Accounting that reconciles: per source, at every committed moment,

    received = published + buffered + summarised + dropped (by reason) + dead-lettered

Every term is kept in the buffer's SQLite file and changed in the same transaction as the
data it counts (edge/buffer.py), so the equation holds across crashes and restarts:
`received` and `dropped:duplicate` move when a flush commits, `buffered` is the sum over
the batches still stored, `published` moves when a batch is deleted after its PubAck,
`dropped:<reason>` when a batch is dropped (overflow, expired, disk_full), `summarised`
when `overflow = "downsample"` compacts raw readings into summaries (edge/compaction.py):
a summarised reading stays summarised when its summary is published, and moves to
`dropped` if the summary itself is dropped (counters `dropped:<source>:summarised:<reason>`;
`published:<source>:summarised` says how many were published in summaries). A reading that
is only in memory (not yet committed) is not counted anywhere: after a crash the broker
delivers it again, and it is counted then.

Units: readings; a dead letter (an undecodable message) counts as one.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.compaction import SUMMARY_MARK
from edge.errors import BufferStoreError


@dataclass(slots=True)
class SourceAccount:
    source: str
    received: int = 0
    published: int = 0
    buffered: int = 0
    dead_lettered: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    # readings represented by summaries (buffered or published in them, not dropped)
    summarised: int = 0
    summarised_buffered: int = 0  # of which still in the buffer, in summary batches
    summarised_published: int = 0  # of which published in summaries

    @property
    def balance(self) -> int:
        """0 when the account reconciles."""
        return self.received - (
            self.published
            + self.buffered
            + self.summarised
            + self.dropped.total()
            + self.dead_lettered
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "published": self.published,
            "buffered": self.buffered,
            "dropped": dict(sorted(self.dropped.items())),
            "dead_lettered": self.dead_lettered,
            "summarised": self.summarised,
            "reconciles": self.balance == 0,
        }


def accounts(db: sqlite3.Connection) -> dict[str, SourceAccount]:
    """Per source, read in one transaction so the terms are from the same moment."""
    out: dict[str, SourceAccount] = {}

    def acct(source: str) -> SourceAccount:
        if source not in out:
            out[source] = SourceAccount(source)
        return out[source]

    db.execute("BEGIN")
    try:
        counters = db.execute("SELECT name, value FROM counters").fetchall()
        buffered = db.execute(
            "SELECT j.key, SUM(j.value) FROM batches, json_each(batches.sources) AS j"
            " GROUP BY j.key"
        ).fetchall()
    finally:
        db.execute("COMMIT")
    for name, value in counters:
        _count(acct, name, value)
    for key, n in buffered:
        source, mark, _ = str(key).partition(SUMMARY_MARK)
        if mark:
            acct(source).summarised_buffered += int(n)
        else:
            acct(source).buffered += int(n)
    return out


_MARK = SUMMARY_MARK.lstrip(":")


def _count(acct: Callable[[str], SourceAccount], name: str, value: int) -> None:
    """One counter row into its account (names: edge/buffer.py `counter_name`)."""
    kind, source, *rest = name.split(":", 2)
    a = acct(source)
    reason = rest[0] if rest else ""
    in_summary, _, reason = reason.partition(":") if reason.startswith(_MARK) else ("", "", reason)
    if kind == "dropped":
        a.dropped[reason or "unknown"] += value
        if in_summary:  # a summary dropped: its readings are no longer summarised
            a.summarised -= value
    elif kind == "published" and in_summary:
        a.summarised_published += value
    elif kind == "summarised":
        a.summarised += value
    elif kind in ("received", "published", "dead_lettered"):
        setattr(a, kind, getattr(a, kind) + value)


@dataclass(frozen=True, slots=True)
class Depth:
    batches: int
    readings: int
    bytes: int
    dead_letters: int
    oldest_age_s: float | None


def depth(db: sqlite3.Connection, now_ns: int | None = None) -> Depth:
    now_ns = now_ns or time.time_ns()
    n, readings, size, oldest = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(readings), 0), COALESCE(SUM(bytes), 0), MIN(created_ns)"
        " FROM batches"
    ).fetchone()
    dead = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    age = None if oldest is None else max(0.0, (now_ns - oldest) / 1e9)
    return Depth(n, readings, size, dead, age)


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only view of a (possibly running) agent's buffer; WAL lets it read alongside."""
    if not Path(path).exists():
        raise BufferStoreError(f"no buffer at {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        db.execute("SELECT 1 FROM counters LIMIT 1")
    except sqlite3.DatabaseError as exc:
        raise BufferStoreError(f"cannot read buffer {path}: {exc}") from exc
    return db


def report(db: sqlite3.Connection) -> dict[str, Any]:
    """What `gateway edge stats --json` prints."""
    d = depth(db)
    accts = accounts(db)
    return {
        "buffer": {
            "batches": d.batches,
            "readings": d.readings,
            "bytes": d.bytes,
            "dead_letters": d.dead_letters,
            "oldest_age_s": None if d.oldest_age_s is None else round(d.oldest_age_s, 3),
        },
        "sources": {s: a.as_dict() for s, a in sorted(accts.items())},
        "reconciles": all(a.balance == 0 for a in accts.values()),
    }


def render(report: dict[str, Any]) -> str:
    """The report as a few lines of text for an operator."""
    b = report["buffer"]
    age = "-" if b["oldest_age_s"] is None else f"{b['oldest_age_s']:.1f}s"
    lines = [
        f"buffer: {b['batches']} batches, {b['readings']} readings, {b['bytes']} bytes,"
        f" {b['dead_letters']} dead letters waiting; oldest {age}",
        f"{'source':<12}{'received':>12}{'published':>12}{'buffered':>10}"
        f"{'summarised':>12}{'dead-letter':>12}  dropped",
    ]
    for source, a in report["sources"].items():
        dropped = ", ".join(f"{k}={v}" for k, v in a["dropped"].items()) or "0"
        mark = "" if a["reconciles"] else "   DOES NOT RECONCILE"
        lines.append(
            f"{source:<12}{a['received']:>12}{a['published']:>12}{a['buffered']:>10}"
            f"{a['summarised']:>12}{a['dead_lettered']:>12}  {dropped}{mark}"
        )
    lines.append(
        "received = published + buffered + summarised + dropped + dead-lettered: "
        + ("holds" if report["reconciles"] else "VIOLATED")
    )
    return "\n".join(lines)

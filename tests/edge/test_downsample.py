"""`overflow = "downsample"` (edge/compaction.py): exact summaries, repeated compaction,
the accounting term, the fallback to dropping, and a crash in the middle of a compaction."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edge import accounting, compaction
from edge.buffer import PendingBatch, SourceCounts, SqliteBuffer
from edge.buffer_cipher import ENCRYPTED, LZ4, create_key_file
from edge.forwarding_metrics import _account_families
from gateway import codec
from gateway.codec import Batch, ColumnBuilder
from gateway.errors import CodecError

T0 = 1_700_000_000 * 1_000_000_000 - 1_700_000_000 * 1_000_000_000 % (3600 * 10**9)
SEC = 1_000_000_000
Truth = dict[tuple[codec.SeriesKey, int], tuple[int, float, float, float, int, float, int, float]]


def _readings(
    rng: random.Random, n: int, series: int, start_s: int
) -> list[tuple[str, int, float]]:
    """n readings (device, time, value), 1 s apart per device; values are multiples of 1/4,
    so every sum is exact in binary and any order of summation gives the same float."""
    out = []
    for i in range(n):
        device = f"d{i % series}"
        out.append((device, T0 + (start_s + i // series) * SEC, rng.randint(-400, 400) / 4))
    return out


def _batch(rows: list[tuple[str, int, float]], seq0: int = 0) -> Batch:
    b = ColumnBuilder("s1", "a1", "a1-x")
    for i, (device, t, v) in enumerate(rows):
        b.add(device, "temp", "Cel", v, t, seq0 + i)
    return b.build()


def truth(rows: list[tuple[str, int, float]], width_s: int) -> Truth:
    """Per (series, window start): count, min, max, sum, first time/value, last time/value."""
    groups: dict[tuple[codec.SeriesKey, int], list[tuple[int, float]]] = {}
    for device, t, v in rows:
        key = ((device, "temp", "Cel"), t - t % (width_s * SEC))
        groups.setdefault(key, []).append((t, v))
    out: Truth = {}
    for key, tv in groups.items():
        tv.sort(key=lambda p: p[0])  # one reading per device and second: no ties
        vals = [v for _, v in tv]
        out[key] = (len(tv), min(vals), max(vals), sum(vals), *tv[0], *tv[-1])
    return out


def as_truth(batch: Batch) -> Truth:
    return {
        (batch.series[s.series], s.start_ns): (
            s.count,
            s.min,
            s.max,
            s.sum,
            s.first_ns,
            s.first,
            s.last_ns,
            s.last,
        )
        for s in batch.summaries
    }


def test_summaries_are_exact_and_merge_exactly() -> None:
    rng = random.Random(1)
    rows = _readings(rng, 3000, series=7, start_s=0)  # about 7 minutes of 7 devices
    parts = [_batch(rows[i : i + 250], seq0=i) for i in range(0, len(rows), 250)]
    minute = compaction.summarise(parts, 60, "m")
    assert as_truth(minute) == truth(rows, 60)
    # again, coarser: minute summaries merged with the raw readings of a later batch
    later = _readings(rng, 700, series=7, start_s=3000 // 7 + 1)
    ten = compaction.summarise([minute, _batch(later, seq0=5000)], 600, "t")
    assert as_truth(ten) == truth(rows + later, 600)
    hour = compaction.summarise([ten], 3600, "h")
    assert as_truth(hour) == truth(rows + later, 3600)
    with pytest.raises(ValueError, match="does not fit"):
        compaction.summarise([hour], 600, "x")


def test_summary_batches_round_trip_and_old_batches_still_decode() -> None:
    rows = _readings(random.Random(2), 120, series=2, start_s=0)
    summary = compaction.summarise([_batch(rows)], 60, "a1:i:1.60s")
    payload = codec.encode(summary)
    assert payload[3] == codec.SUMMARY_VERSION
    back = codec.decode(payload)
    assert (back.summaries, back.series, len(back)) == (summary.summaries, summary.series, 0)
    plain = codec.encode(_batch(rows))
    assert plain[3] == codec.VERSION and codec.decode(plain).summaries == ()
    with pytest.raises(CodecError, match="no SenML form"):
        codec.encode_senml(summary)


@pytest.mark.parametrize(
    "bad",
    [
        b'"summaries": 3',
        b'"summaries": [[0, 1, 60, 0, 1.0, 1.0, 1.0, 1, 1.0, 1, 1.0]]',  # count 0
        b'"summaries": [[5, 1, 60, 1, 1.0, 1.0, 1.0, 1, 1.0, 1, 1.0]]',  # no series 5
        b'"summaries": [[0, 1, 60, 1, "x", 1.0, 1.0, 1, 1.0, 1, 1.0]]',
    ],
)
def test_malformed_summaries_are_refused_with_a_reason(bad: bytes) -> None:
    summary = compaction.summarise([_batch(_readings(random.Random(3), 4, 1, 0))], 60, "x")
    good = codec.encode(summary)
    hlen = int.from_bytes(good[4:8], "little")
    header = good[8 : 8 + hlen]
    start = header.index(b'"summaries"')
    forged = header[:start] + bad + b"}"
    pad = (-(8 + len(forged))) % 8
    payload = good[:4] + len(forged).to_bytes(4, "little") + forged + b"\0" * pad
    with pytest.raises(CodecError, match="summaries"):
        codec.decode(payload)


def _fill(buf: SqliteBuffer, rows: list[tuple[str, int, float]], per_batch: int) -> None:
    for i in range(0, len(rows), per_batch):
        part = rows[i : i + per_batch]
        payload = codec.encode(_batch(part, seq0=i))
        intake = SourceCounts(Counter({"mqtt0": len(part)}))
        buf.commit(
            PendingBatch(codec.CONTENT_TYPE, len(part), payload),
            buf.next_batch_id("a1"),
            [],
            None,
            intake,
        )
        acct = accounting.accounts(buf.connection)["mqtt0"]
        assert acct.balance == 0, acct


def _stored(buf: SqliteBuffer) -> list[Batch]:
    return [codec.decode(b.payload) for b in buf.oldest_batches(100_000)]


def _coarsest(batches: list[Batch]) -> int:
    return max(s.width_s for b in batches for s in b.summaries)


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "encrypted"])
def test_a_full_buffer_compacts_instead_of_dropping(tmp_path: Path, sealed: bool) -> None:
    key = None
    if sealed:
        create_key_file(key := tmp_path / "k.key")
    rows = _readings(random.Random(4), 40_000, series=20, start_s=0)  # 2,000 s of 20 devices
    dropping = SqliteBuffer(tmp_path / "d.sqlite3", max_bytes=1 << 16, max_age_s=0)
    dropping.open()
    _fill(dropping, rows, per_batch=200)  # what drop_oldest loses of the same readings
    assert accounting.accounts(dropping.connection)["mqtt0"].dropped["overflow"] > len(rows) / 2
    buf = SqliteBuffer(
        tmp_path / "b.sqlite3", max_bytes=1 << 16, overflow="downsample", max_age_s=0, key_file=key
    )
    buf.open()
    _fill(buf, rows, per_batch=200)
    assert buf.stats().bytes <= 1 << 16
    acct = accounting.accounts(buf.connection)["mqtt0"]
    assert acct.dropped.total() == 0 and acct.summarised > 0
    assert acct.received == acct.buffered + acct.summarised == len(rows)
    assert acct.summarised == acct.summarised_buffered
    stored = _stored(buf)
    kinds = [bool(b.summaries) for b in stored]
    assert kinds.index(False) > 0 and True not in kinds[kinds.index(False) :]  # oldest first
    width = _coarsest(stored)
    assert as_truth(compaction.summarise(stored, width, "c")) == truth(rows, width)
    flags = buf.connection.execute(
        "SELECT DISTINCT compressed FROM batches WHERE content_type = ?",
        (codec.SUMMARY_CONTENT_TYPE,),
    ).fetchall()
    assert flags == [(LZ4 | ENCRYPTED if sealed else LZ4,)]  # sealed like any batch


@pytest.mark.slow  # about 30 s here: 144,000 readings through 360 compacting commits
def test_repeated_compaction_goes_coarser_then_drops_the_oldest(tmp_path: Path) -> None:
    buf = SqliteBuffer(
        tmp_path / "b.sqlite3", max_bytes=1 << 16, overflow="downsample", max_age_s=0
    )
    buf.open()
    # 200 devices, one reading each per 20 min for 10 days: the day summaries alone
    # overfill it (a minute or 10-minute summary of one reading frees nothing)
    rng = random.Random(5)
    rows = [
        (f"d{d}", T0 + k * 1200 * SEC, rng.randint(0, 99) / 4)
        for k in range(720)
        for d in range(200)
    ]
    _fill(buf, rows, per_batch=400)
    acct = accounting.accounts(buf.connection)["mqtt0"]
    assert buf.stats().bytes <= 1 << 16
    assert _coarsest(_stored(buf)) >= 3600
    assert acct.dropped["overflow"] > 0  # nothing more could be compacted: dropped, counted
    assert acct.received == acct.buffered + acct.summarised + acct.dropped.total()


def test_published_summaries_stay_summarised(tmp_path: Path) -> None:
    buf = SqliteBuffer(
        tmp_path / "b.sqlite3", max_bytes=1 << 16, overflow="downsample", max_age_s=0
    )
    buf.open()
    rows = _readings(random.Random(6), 30_000, series=20, start_s=0)
    _fill(buf, rows, per_batch=200)
    while batches := buf.oldest_batches(50):
        buf.delete_batches(batches)
    acct = accounting.accounts(buf.connection)["mqtt0"]
    assert acct.buffered == acct.summarised_buffered == 0 and acct.balance == 0
    assert acct.published + acct.summarised == len(rows)
    assert acct.summarised_published == acct.summarised > 0
    text = accounting.render(accounting.report(buf.connection))
    assert "summarised" in text and "holds" in text


_CRASH = """
import sys
from edge import compaction
from tests.edge import test_downsample as t

real = compaction._compact
def crash_after(*args, **kwargs):
    freed = real(*args, **kwargs)  # summary written, originals deleted: not yet committed
    import os
    os._exit(17)
compaction._compact = crash_after
buf = t.SqliteBuffer(sys.argv[1], max_bytes=1 << 16, overflow="downsample", max_age_s=0)
buf.open()
t._fill(buf, t._readings(t.random.Random(7), 40_000, series=20, start_s=0), per_batch=200)
"""


def test_a_crash_in_the_middle_of_a_compaction_leaves_a_consistent_buffer(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-c", _CRASH, str(path)], env=env, timeout=120)
    assert done.returncode == 17  # it did crash inside a compaction
    buf = SqliteBuffer(path, max_bytes=1 << 16, overflow="downsample", max_age_s=0)
    buf.open()
    acct = accounting.accounts(buf.connection)["mqtt0"]
    assert acct.balance == 0 and acct.summarised == 0  # the compaction rolled back whole
    stored = _stored(buf)
    assert not any(b.summaries for b in stored)
    assert sum(len(b) for b in stored) == acct.buffered == acct.received
    # and it carries on: the next commit compacts
    _fill(buf, _readings(random.Random(8), 2000, series=20, start_s=5000), per_batch=200)
    assert accounting.accounts(buf.connection)["mqtt0"].summarised > 0
    assert np.all([b.site == "s1" for b in _stored(buf)])


def test_metrics_show_the_summarised_term(tmp_path: Path) -> None:
    buf = SqliteBuffer(
        tmp_path / "b.sqlite3", max_bytes=1 << 16, overflow="downsample", max_age_s=0
    )
    buf.open()
    _fill(buf, _readings(random.Random(9), 30_000, series=20, start_s=0), per_batch=200)
    acct = accounting.accounts(buf.connection)
    families = {f.name: f for f in _account_families(acct)}
    [sample] = families["gateway_agent_source_summarised_readings"].samples
    assert sample.labels == {"source": "mqtt0"} and sample.value == acct["mqtt0"].summarised > 0
    [balance] = families["gateway_agent_source_unaccounted_readings"].samples
    assert balance.value == 0

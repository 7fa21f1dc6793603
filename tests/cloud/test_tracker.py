"""The tracker's restart rule, without a server: checkpoint anywhere, replay, same result.

A run that stops after any message, checkpoints, and resumes in a fresh tracker from the
checkpoint must publish, for every window, the same last record as an uninterrupted run,
and reject the same readings as late (each exactly once).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from cloud.records import WindowId, WindowRecord
from cloud.tracker import Tracker
from gateway import codec
from tests.cloud.reference import make_batches

Msgs = list[tuple[str, codec.Batch]]


def _messages(seed: int) -> Msgs:
    rng = np.random.default_rng(seed)
    batches = make_batches(rng, agents=3, devices=2, seconds=120, batch_size=15)
    # Agents drain backlogs: local shuffles make some readings late, most within lateness.
    out = [(s, b) for s, _, b in batches]
    for lo in range(0, len(out), 12):
        chunk = out[lo : lo + 12]
        out[lo : lo + 12] = [chunk[i] for i in rng.permutation(len(chunk))]
    return out


def _run(tracker: Tracker, msgs: Msgs, first: int, last: int, every: int) -> tuple[Any, Any]:
    """Feed messages `first..last` (stream seqs, 1-based); `due` every few messages."""
    records: dict[WindowId, WindowRecord] = {}
    late: list[tuple[int, int]] = []
    for sseq in range(first, last + 1):
        subject, batch = msgs[sseq - 1]
        result = tracker.ingest(subject, sseq, batch)
        late += [(sseq, r.readings(batch)) for r in result.rejected]
        if sseq % every == 0 or sseq == last:
            for r in tracker.due(set()):
                records[r.window_id] = r
    return records, late


def _finish(tracker: Tracker, records: dict[WindowId, WindowRecord]) -> None:
    for r in tracker.due(set(tracker.agents)):
        records[r.window_id] = r


@pytest.mark.parametrize("seed", [1, 2])
def test_checkpoint_anywhere_then_replay_gives_the_same_records(seed: int) -> None:
    msgs = _messages(seed)
    n = len(msgs)
    whole = Tracker([10, 60], lateness_s=8)
    want, want_late = _run(whole, msgs, 1, n, every=5)
    _finish(whole, want)
    assert want_late, "the data should exercise late readings"
    for cut in np.random.default_rng(seed).choice(np.arange(1, n), 12, replace=False):
        before = Tracker([10, 60], lateness_s=8)
        got, late = _run(before, msgs, 1, int(cut), every=5)
        ckpt = orjson.loads(orjson.dumps(before.checkpoint(int(cut))))
        after = Tracker([10, 60], lateness_s=8)
        start = after.restore(ckpt)
        assert start <= cut + 1
        more, more_late = _run(after, msgs, start, n, every=5)
        got.update(more)
        _finish(after, got)
        assert got == want, f"cut at {cut}"
        assert sorted(late + more_late) == sorted(want_late), f"cut at {cut}"


def test_restore_rejects_other_window_settings() -> None:
    ckpt = Tracker([10], 2).checkpoint(0)
    with pytest.raises(ValueError, match="other window settings"):
        Tracker([10, 60], 2).restore(ckpt)


def test_a_gone_agent_has_its_windows_made_final_and_stops_pinning_the_replay() -> None:
    msgs = [(s, b) for s, _, b in make_batches(np.random.default_rng(3), agents=2, seconds=30)]
    tracker = Tracker([10, 60], lateness_s=2)
    for sseq, (subject, batch) in enumerate(msgs, start=1):
        tracker.ingest(subject, sseq, batch)
    tracker.due(set())
    gone = "telemetry.s1.a0"
    records = tracker.due({gone}, frozenset({gone}))
    assert records and all(r.device.startswith("a0-") and r.closed for r in records)
    agents = tracker.checkpoint(len(msgs))["agents"]
    assert agents[gone]["from_seq"] is None
    assert agents["telemetry.s1.a1"]["from_seq"] is not None
    old = next(b for s, b in msgs if s == gone)  # its first batch again, now late
    rejected = tracker.ingest(gone, len(msgs) + 1, old).rejected
    assert {r.reason for r in rejected} == {"late_10s", "late_1m"}


def _with_copies(msgs: Msgs, seed: int) -> Msgs:
    """Some messages again, one to three messages later: the same content, a new stream
    sequence (a duplicate that passed JetStream's dedupe window)."""
    rng = np.random.default_rng(seed)
    out = list(msgs)
    for i in sorted(rng.choice(len(msgs), len(msgs) // 4, replace=False), reverse=True):
        out.insert(min(len(out), int(i) + 1 + int(rng.integers(0, 3))), msgs[int(i)])
    return out


@pytest.mark.parametrize("seed", [3, 4])
def test_copies_count_once_in_every_window_across_checkpoints(seed: int) -> None:
    rng = np.random.default_rng(seed)
    batches = make_batches(rng, agents=2, devices=2, seconds=120, batch_size=15, unnumbered=0.3)
    once: Msgs = [(s, b) for s, _, b in batches]
    single = Tracker([10, 60], lateness_s=8)
    want, _ = _run(single, once, 1, len(once), every=5)
    _finish(single, want)
    msgs = _with_copies(once, seed)
    n = len(msgs)
    whole = Tracker([10, 60], lateness_s=8)
    got, _ = _run(whole, msgs, 1, n, every=5)
    _finish(whole, got)
    assert got == want
    assert whole.duplicates > 0
    for cut in np.random.default_rng(seed).choice(np.arange(1, n), 8, replace=False):
        before = Tracker([10, 60], lateness_s=8)
        part, _ = _run(before, msgs, 1, int(cut), every=5)
        after = Tracker([10, 60], lateness_s=8)
        start = after.restore(orjson.loads(orjson.dumps(before.checkpoint(int(cut)))))
        more, _ = _run(after, msgs, start, n, every=5)
        part.update(more)
        _finish(after, part)
        assert part == want, f"cut at {cut}"


def _one(readings: list[tuple[float, int, int]], batch_id: str) -> codec.Batch:
    b = codec.ColumnBuilder("s1", "a0", batch_id)
    for value, t, seq in readings:
        b.add("d0", "temp", "u", value, t, seq)
    return b.build()


def test_reading_identity_numbered_and_unnumbered() -> None:
    t = 1_700_000_000 * 10**9
    tracker = Tracker([10], lateness_s=0)
    messages = [
        # Unnumbered: two equal readings in one message are two readings.
        _one([(1.0, t, -1), (1.0, t, -1), (2.0, t, -1), (5.0, t + 1, 7)], "m1"),
        _one([(1.0, t, -1), (1.0, t, -1), (2.0, t, -1), (5.0, t + 1, 7)], "m1"),  # a copy
        _one([(1.0, t, -1), (3.0, t, -1)], "m2"),  # 1.0 at t: indistinguishable from a copy
        _one([(9.0, t + 1, 7), (5.0, t + 2, 8)], "m3"),  # seq 7 again: the same reading
    ]
    for sseq, batch in enumerate(messages, 1):
        tracker.ingest("telemetry.s1.a0", sseq, batch)
    (record,) = tracker.due({"telemetry.s1.a0"})
    assert record.count == 6  # 1.0, 1.0, 2.0, 3.0 (unnumbered), seq 7 (value 5.0), seq 8
    assert record.sum == 1.0 + 1.0 + 2.0 + 3.0 + 5.0 + 5.0
    assert tracker.duplicates == 4 + 1 + 1

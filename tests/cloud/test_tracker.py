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
        late += [(sseq, int(r.rows.sum())) for r in result.rejected]
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

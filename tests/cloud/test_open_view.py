"""`Tracker.live` keeps each width's open windows sorted and merges new rows into them; its
records must equal a recomputation with `group_stats` of the newest open window of each
series from every held row, however `due` and `live` calls interleave (late readings,
copies of batches, idle and gone agents included)."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.records import WindowRecord
from cloud.tracker import NO_TIME, AgentState, Tracker, WidthState
from cloud.windows import group_stats, window_index
from gateway import codec
from tests.cloud.reference import make_batches, with_copies


def _recomputed(tracker: Tracker, agent: AgentState, ws: WidthState) -> list[WindowRecord]:
    """The live records the straightforward way: group everything of the newest window."""
    rows = ws.rows
    win = window_index(rows.time, ws.width_ns)
    open_ = (win + 1) * ws.width_ns > agent.watermark
    rows, win = rows.take(open_), win[open_]
    if not len(rows):
        return []
    newest = np.full(len(agent.series), NO_TIME, dtype=np.int64)
    np.maximum.at(newest, rows.sid, win)
    shown = win == newest[rows.sid]
    rows, win = rows.take(shown), win[shown]
    stats = group_stats(rows.sid, win, rows.time, rows.seq, rows.value)
    return tracker.records(agent, ws, stats, closed=False)


@pytest.mark.parametrize("seed", range(6))
def test_live_equals_a_recomputation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    batches = make_batches(rng, agents=2, devices=3, seconds=200, batch_size=15)
    msgs = [(s, b) for s, _, b in with_copies(batches, rng)]
    for lo in range(0, len(msgs), 12):  # local shuffles: some readings late
        chunk = msgs[lo : lo + 12]
        msgs[lo : lo + 12] = [chunk[i] for i in rng.permutation(len(chunk))]
    tracker = Tracker([10, 60, 3600], 5.0)
    compared = 0
    for sseq, (subject, batch) in enumerate(msgs, 1):
        tracker.ingest(subject, sseq, batch)
        if rng.random() < 0.3:
            idle = {subject} if rng.random() < 0.05 else set()
            tracker.due(idle, frozenset(idle) if rng.random() < 0.3 else frozenset())
        if rng.random() < 0.3:
            expected = [
                r
                for agent in tracker.agents.values()
                for ws in agent.widths
                if ws.live_dirty and len(ws)
                for r in _recomputed(tracker, agent, ws)
            ]
            got = tracker.live()
            assert sorted(map(repr, got)) == sorted(map(repr, expected))
            compared += len(got)
    assert compared > 100


def test_a_series_that_stops_drops_out_once_its_window_closes() -> None:
    def batch(n: int, devices: list[str], t_s: int) -> codec.Batch:
        b = codec.ColumnBuilder("s1", "a", f"a-{n}", capacity=len(devices))
        for i, device in enumerate(devices):
            b.add(device, "temp", "Cel", float(n + i), t_s * 10**9, n)
        return b.build()

    tracker = Tracker([10, 60], 5.0)
    tracker.ingest("telemetry.s1.a", 1, batch(1, ["d1", "d2"], 1))
    assert {(r.device, r.window) for r in tracker.live()} == {
        ("d1", "10s"),
        ("d2", "10s"),
        ("d1", "1m"),
        ("d2", "1m"),
    }
    tracker.ingest("telemetry.s1.a", 2, batch(2, ["d2"], 15))  # d1's 10 s window closes
    shown = {(r.device, r.window, r.start_ns, r.count) for r in tracker.live()}
    assert shown == {("d2", "10s", 10 * 10**9, 1), ("d1", "1m", 0, 1), ("d2", "1m", 0, 2)}

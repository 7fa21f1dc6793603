"""The six chaos scenarios of the guarantee chain, each bounded in time.

After each: the TELEMETRY stream holds every reading the fleet emitted exactly once
(`app.verify.compare`), except what a drop policy dropped, which equals, to the
reading, what the agent's own accounting reports; and the accounting reconciles.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest

from tests.chaos.rig import AgentOptions, Rig, rig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _assert_exact(r: Rig, report: object, dropped: int = 0) -> None:
    from app.verify import Report

    assert isinstance(report, Report)
    assert report.duplicates == 0, report.summary()
    assert report.altered == 0, report.summary()
    assert report.missing == dropped, (report.summary(), dropped)
    accounts = r.accounts()
    assert accounts["reconciles"], accounts


async def test_kill_agent_20_times_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(4)
    async with rig(tmp_path) as r:
        r.start_agent()
        await r.wait_ready()
        r.start_fleet(devices=10, rate_hz=20)
        for _ in range(20):
            await asyncio.sleep(rng.uniform(0.2, 1.2))  # a random instant, not a sync point
            await r.kill_agent()
            r.start_agent()
        await r.stop_fleet()
        report = await r.settle()
        await r.stop_agent()
        _assert_exact(r, report)
        assert report.emitted > 1000


async def test_cloud_down_for_60_seconds_then_everything_arrives_once(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.start_agent()
        await r.wait_ready()
        fleet = r.start_fleet(devices=10, rate_hz=10)
        await r.wait_emitted(500)
        await r.cloud.stop()
        outage_started = time.monotonic()
        before = fleet.truth.emitted
        # The outage lasts 60 s; meanwhile the agent must keep taking readings into its buffer.
        seen = [r.accounts()["buffer"]["readings"]]
        while time.monotonic() - outage_started < 60:
            await asyncio.sleep(1.0)  # a sampling period, not synchronisation
            seen.append(r.accounts()["buffer"]["readings"])
        assert seen[-1] > seen[len(seen) // 2] > seen[0]  # still growing late in the outage
        buffered = seen[-1]
        assert buffered > 0.5 * (fleet.truth.emitted - before)  # it was all buffered
        await r.cloud.start()
        assert time.monotonic() - outage_started >= 60
        await r.reconnect_js()
        await r.wait_emitted(fleet.truth.emitted + 500)  # live readings during the drain
        await r.stop_fleet()
        report = await r.settle()
        await r.stop_agent()
        _assert_exact(r, report)


async def test_mqtt_broker_restarts_lose_nothing(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.start_agent()
        await r.wait_ready()
        fleet = r.start_fleet(devices=10, rate_hz=20)
        for i in range(3):
            await r.wait_emitted(fleet.truth.emitted + 400)
            if i == 1:
                await r.edge.kill()  # and once without any chance to flush
            else:
                await r.edge.stop()
            await r.edge.start()
        await r.wait_emitted(fleet.truth.emitted + 400)
        await r.stop_fleet()
        report = await r.settle()
        await r.stop_agent()
        # Measured (tests/edge/test_redelivery_brokers.py): a restarted nats-server resends
        # what was unacknowledged with DUP set but new packet ids, so the agent cannot prove
        # those copies and keeps them (edge/dedupe.py); the cloud counts them once. They
        # are at most what was unacknowledged at each restart: about one open batch.
        assert report.duplicates <= 3 * r.options.max_readings, report.summary()
        assert (report.missing, report.altered) == (0, 0), report.summary()
        assert r.accounts()["reconciles"]


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "block"])
async def test_buffer_filled_past_its_limit_drops_exactly_what_it_reports(
    tmp_path: Path, overflow: str
) -> None:
    options = AgentOptions(max_bytes=1 << 16, overflow=overflow)
    async with rig(tmp_path, options) as r:
        await r.cloud.stop()
        r.start_agent()
        await r.wait_ready()
        fleet = r.start_fleet(devices=20, rate_hz=50)
        await r.wait_emitted(8000)  # about 4 x what 64 KiB holds
        await r.stop_fleet()
        if overflow == "block":  # nothing dropped: the agent stopped taking readings
            await _until(lambda: r.accounts()["buffer"]["readings"] > 1000)
            assert r.dropped() == 0
            assert r.accounts()["sources"]["mqtt0"]["received"] < fleet.truth.emitted
        else:  # the agent took everything and dropped the overflow
            await _until(
                lambda: (
                    r.accounts()["sources"].get("mqtt0", {}).get("received", 0)
                    >= fleet.truth.emitted
                )
            )
            assert r.dropped() > 0
        dropped = r.dropped()
        await r.cloud.start()
        await r.reconnect_js()
        report = await r.settle()
        await r.stop_agent()
        assert r.dropped() == dropped
        _assert_exact(r, report, dropped=dropped)


async def test_truncated_and_corrupted_buffer_between_runs(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.start_agent()
        await r.wait_ready()
        fleet = r.start_fleet(devices=10, rate_hz=20)
        await r.wait_emitted(400)
        await r.stop_agent()  # an orderly stop sends what it buffered
        os.truncate(r.buffer_path, r.buffer_path.stat().st_size // 3)
        r.start_agent()
        await r.wait_ready()
        await r.wait_emitted(fleet.truth.emitted + 400)
        await r.cloud.stop()  # now batches stay buffered...
        await _until(lambda: r.accounts()["buffer"]["batches"] >= 5)
        await r.stop_agent()
        _scribble_over_batch_index(r.buffer_path)  # ...and the file is damaged under them
        await r.cloud.start()
        await r.reconnect_js()
        r.start_agent()
        await r.wait_ready()
        await r.wait_emitted(fleet.truth.emitted + 400)
        await r.stop_fleet()
        report = await r.settle()
        await r.stop_agent()
        _assert_exact(r, report)
        assert list(r.buffer_path.parent.glob("buffer.sqlite3.corrupt-*"))
        assert "salvaged" in (r.root / "agent.log").read_text()


def _scribble_over_batch_index(path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    root = db.execute(
        "SELECT rootpage FROM sqlite_master WHERE name LIKE 'sqlite_autoindex_batches%'"
    ).fetchone()[0]
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xff" * page)


async def test_batch_published_before_a_crash_is_not_stored_twice_after_the_window(
    tmp_path: Path,
) -> None:
    from edge.buffer import SqliteBuffer
    from gateway import subjects

    async with rig(tmp_path, duplicate_window_s=2.0) as r:
        await r.cloud.stop()
        r.start_agent()
        await r.wait_ready()
        fleet = r.start_fleet(devices=5, rate_hz=20)
        await _until(lambda: r.accounts()["buffer"]["batches"] >= 6)
        await r.stop_fleet()
        await r.stop_agent()
        # The agent published three batches, the stream stored them, and it died before
        # deleting them: the same state, made by hand with the agent's own buffer.
        buf = SqliteBuffer(r.buffer_path, max_bytes=1 << 30)
        buf.open()
        sent = buf.oldest_batches(3)
        buf.mark_attempted(b.row for b in sent)
        buf.close()
        await r.cloud.start()
        await r.reconnect_js()
        for b in sent:
            await r.js.publish(
                subjects.telemetry("chaos", "a1"), b.payload, headers={"Nats-Msg-Id": b.batch_id}
            )
        # The outage outlasts the dedupe window: JetStream itself would store a resend.
        probe = {"Nats-Msg-Id": "probe"}
        await r.js.publish("dlq.chaos.probe", b"1", headers=probe)
        await asyncio.sleep(2.5)
        assert not (await r.js.publish("dlq.chaos.probe", b"2", headers=probe)).duplicate
        r.start_agent()
        report = await r.settle()
        await r.stop_agent()
        _assert_exact(r, report)
        assert report.emitted == fleet.truth.emitted > 0
        assert "3 batches were already in the stream" in (r.root / "agent.log").read_text()


async def _until(cond: object, timeout: float = 60) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)

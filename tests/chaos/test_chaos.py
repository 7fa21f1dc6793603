"""The six chaos scenarios of the guarantee chain, each bounded in time.

After each: the TELEMETRY stream holds every reading the fleet emitted exactly once
(`gateway.verify.compare`), except what a drop policy dropped, which equals, to the
reading, what the agent's own accounting reports; and the accounting reconciles.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.chaos.rig import AgentOptions, Rig, rig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _assert_exact(r: Rig, report: object, dropped: int = 0) -> None:
    from gateway.verify import Report

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

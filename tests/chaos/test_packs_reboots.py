"""Issue 12 in the chaos suite: devices sending packs (JSON arrays of 100 readings) and
devices rebooting with their seq restarting under a new boot, while the agent is
SIGKILLed at random moments of the drain of a backlog (the cloud stopped for a few
seconds before each kill, so a backlog is there to drain). Every reading arrives exactly
once, but what the agent reports it dropped; its accounting reconciles."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from firmware_sim.fleet import Fleet, FleetSettings

from devices.catalog import load_catalog
from tests.chaos.rig import SITE, Rig, rig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

KILLS = 8


def _start_fleet(r: Rig) -> Fleet:
    """Half the devices send JSON packs (the rig's agent reads JSON), half of the fleet
    reboots often and restarts its seq (profile `reboots`)."""
    settings = FleetSettings(
        host="127.0.0.1", port=r.edge.mqtt_port, devices=10, site=SITE, rate_hz=2.0,
        profile="reboots", pack_percent=50, pack_formats=("json",),
    )  # fmt: skip
    r.fleet = Fleet(settings, load_catalog())
    r._fleet_task = asyncio.create_task(r.fleet.run(r._fleet_stop), name="fleet")
    return r.fleet


async def test_packs_and_reboots_with_kills_during_drains_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(12)
    async with rig(tmp_path) as r:
        r.start_agent()
        await r.wait_ready()
        fleet = _start_fleet(r)
        await r.wait_emitted(1000)
        for _ in range(KILLS):
            await r.cloud.stop()  # a backlog builds in the agent's buffer
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            await r.cloud.start()
            await asyncio.sleep(rng.uniform(0.1, 1.5))  # a random moment of the drain
            await r.kill_agent()
            r.start_agent()
        await r.reconnect_js()
        await r.stop_fleet()
        report = await r.settle()
        dropped = r.dropped()
        await r.stop_agent()
    assert fleet.engine.stats.faults["reboot"] > 0
    assert sum(1 for g in fleet.engine.groups if g.k > 1 for _ in range(g.n)) == 5
    assert report.duplicates == 0 and report.altered == 0, report.summary()
    assert report.missing == dropped, (report.summary(), dropped)
    assert report.emitted > 5000, report.summary()
    assert r.accounts()["reconciles"]

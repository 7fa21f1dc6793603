"""Issue 12: devices that reboot (seq restarting at 1, clock continuing) inside a backlog
of packs (JSON arrays of 100 readings), the agent killed (SIGKILL) at random moments of
its drain. On the seq high-water code every reading after a reboot was lost as a
"duplicate" until the old mark was passed; now nothing is lost and nothing stored twice."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.chaos.rig import SITE, rig
from tests.helpers import publish_qos1, reading

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DEVICES, PACKS, PER_PACK, KILLS = 5, 20, 100, 8
BOOT_NS = 1_700_000_000_000_000_000
REBOOT = 10_000.0  # added to the values after the reboot, to tell the two runs apart


def _run(device: str, boot_ns: int, offset: float) -> list[bytes]:
    """One boot of a device: seqs 1.. again, times from `boot_ns` on."""
    seqs = range(1, PACKS * PER_PACK + 1)
    rows = [reading(device, s, offset + s, site=SITE, time_ns=boot_ns) for s in seqs]
    return [orjson.dumps(rows[i : i + PER_PACK]) for i in range(0, len(rows), PER_PACK)]


async def test_rebooting_devices_in_a_backlog_killed_while_draining(tmp_path: Path) -> None:
    rng = random.Random(7)
    async with rig(tmp_path) as r:
        r.start_agent()  # once, so that the broker keeps a session for it
        await r.wait_ready()
        await r.kill_agent()
        for d in range(DEVICES):  # two boots each, published while the agent is away
            packs = _run(f"d{d}", BOOT_NS, 0.0) + _run(f"d{d}", BOOT_NS + 10**12, REBOOT)
            await asyncio.to_thread(publish_qos1, r.edge.mqtt_port, f"sensors/{SITE}/d{d}", packs)
        for _ in range(KILLS):
            r.start_agent()
            await r.wait_ready()
            await asyncio.sleep(rng.uniform(0.05, 0.8))  # a random moment of the drain
            await r.kill_agent()
        r.start_agent()
        await r.wait_ready()
        per_device = 2 * PACKS * PER_PACK
        want = Counter({(SITE, f"d{d}"): per_device for d in range(DEVICES)})
        contents = await r.wait_counts(want)
        await r.stop_agent()
        expected = sorted((s, b + s) for b in (0.0, REBOOT) for s in range(1, PACKS * PER_PACK + 1))
        for d in range(DEVICES):
            key = (SITE, f"d{d}")
            seqs = np.concatenate(contents.seqs[key]).tolist()
            values = np.concatenate(contents.values[key]).tolist()
            # every reading of both boots exactly once: 0 missing, 0 duplicates
            assert sorted(zip(seqs, values, strict=True)) == expected, (d, len(seqs))
        accounts = r.accounts()
        assert accounts["reconciles"], accounts
        assert sum(a["dropped"].get("duplicate", 0) for a in accounts["sources"].values()) == 0

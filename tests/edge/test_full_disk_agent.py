"""A full disk under a running agent (issue 12): data_dir on a small tmpfs, the cloud down,
devices publishing; the disk is filled, freed and filled again. No crash, no hang (SIGTERM
stops the agent within 10 s, also while the disk is full), the agent recovers by itself
when space returns, every reading missing in the cloud is one the agent counted as
dropped, and none arrives twice. (Acknowledgements held back for seconds by the full disk
are what made nats-server resend a few messages under a new packet id, once stored twice:
edge/dedupe.py.) The agent is a real child process; root mounts the tmpfs (as
tests/edge/test_buffer_tmpfs.py does)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.rig import AgentOptions, Rig, rig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(ballast: Path) -> int:
    """Write `ballast` until the filesystem refuses (ENOSPC); bytes written. Bounded by the
    tmpfs size."""
    written = 0
    with contextlib.suppress(OSError), ballast.open("ab") as f:
        while True:
            f.write(os.urandom(64 << 10))
            f.flush()
            written += 64 << 10
    return written


def disk_full_drops(r: Rig) -> int:
    return sum(a["dropped"].get("disk_full", 0) for a in r.accounts()["sources"].values())


async def sigterm_within(r: Rig, limit: float) -> float:
    started = time.monotonic()
    await r.stop_agent()  # SIGTERM, SIGKILL only after 15 s
    took = time.monotonic() - started
    assert took < limit, f"SIGTERM took {took:.1f}s"
    return took


async def test_fill_free_fill_with_a_running_agent(tmp_path: Path) -> None:
    rng = random.Random(12)
    opts = AgentOptions(max_bytes=256 << 20, max_readings=200, linger_ms=100)
    with tmpfs(tmp_path / "agent", "3m") as disk:
        ballast = disk / "ballast"
        async with rig(tmp_path, opts) as r:
            r.start_agent()
            await r.wait_ready()
            await r.cloud.stop()  # the backlog stays on the small disk
            fleet = r.start_fleet(devices=10, rate_hz=40)
            for cycle in range(2):
                fill(ballast)  # full
                t_full = time.monotonic()
                while disk_full_drops(r) == 0 and time.monotonic() - t_full < 60:
                    r.children.check_alive()  # never a crash
                    await asyncio.sleep(0.5)
                assert disk_full_drops(r) > 0, "the disk never filled up"
                await asyncio.sleep(rng.uniform(0.5, 3.0))
                await sigterm_within(r, 10.0)  # while full
                r.start_agent()
                await r.wait_ready()
                emitted = fleet.truth.emitted
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                r.children.check_alive()
                ballast.unlink()  # space returns: the agent carries on by itself
                await r.wait_emitted(emitted + 400)
                if cycle == 0:
                    await asyncio.sleep(rng.uniform(0.2, 2.0))
                    await sigterm_within(r, 10.0)  # at a random moment, not full
                    r.start_agent()
                    await r.wait_ready()
            await r.cloud.start()
            await r.reconnect_js()
            await r.wait_emitted(fleet.truth.emitted + 200)
            await r.stop_fleet()
            report = await r.settle(timeout=120)
            await r.stop_agent()
            dropped = r.dropped()
            accounts = r.accounts()
    assert dropped > 0
    assert report.duplicates == 0, report.summary()
    assert report.altered == 0, report.summary()
    assert report.missing == dropped, (report.summary(), dropped)
    assert accounts["reconciles"], accounts

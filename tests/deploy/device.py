"""Simulated edge devices for deployment tests: a supervisor on a temporary root."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from edge.supervisor.supervisor import Supervisor, SupervisorSettings


@dataclass(frozen=True, slots=True)
class Device:
    site: str
    agent: str
    root: Path


def make_device(
    root: Path,
    site: str,
    agent: str,
    nats_url: str,
    mqtt_url: str,
    topics: list[str],
    public_key: Path,
) -> Device:
    (root / "etc").mkdir(parents=True)
    topic_list = ", ".join(f'"{t}"' for t in topics)
    (root / "etc" / "device.toml").write_text(
        f'site = "{site}"\nagent = "{agent}"\ndata_dir = "{root / "data"}"\n\n'
        f'[nats]\nurl = "{nats_url}"\n\n'
        f'[[sources]]\nurl = "{mqtt_url}"\ntopics = [{topic_list}]\n\n'
        "[batch]\nlinger_ms = 100\n\n[uplink]\nheartbeat_s = 0.5\n"
    )
    (root / "etc" / "trusted.pub").write_bytes(public_key.read_bytes())
    return Device(site, agent, root)


@contextlib.asynccontextmanager
async def supervising(
    devices: list[Device], health_timeout_s: float
) -> AsyncIterator[list[Supervisor]]:
    stop = asyncio.Event()
    sups = [Supervisor(SupervisorSettings(d.root, health_timeout_s)) for d in devices]
    tasks = [
        asyncio.create_task(s.run(stop), name=f"supervisor-{d.agent}")
        for s, d in zip(sups, devices, strict=True)
    ]
    try:
        yield sups
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)

"""Simulated edge devices for deployment tests: a supervisor on a temporary root."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from edge.supervisor.supervisor import Supervisor, SupervisorSettings
from gateway.pki import write_private
from gateway.servers import NatsServer
from tests.helpers import agent_nats


@dataclass(frozen=True, slots=True)
class Device:
    site: str
    agent: str
    root: Path


def make_device(
    root: Path,
    site: str,
    agent: str,
    cloud: NatsServer,
    mqtt_url: str,
    topics: list[str],
    public_key: Path,
) -> Device:
    """A device root as `gateway deploy bootstrap` leaves it: its own enrolled creds in
    etc/nats.creds (0600), the cloud's CA named in device.toml."""
    (root / "etc").mkdir(parents=True)
    nats = agent_nats(cloud, site, agent)
    write_private(root / "etc" / "nats.creds", Path(nats["creds_file"]).read_bytes())
    topic_list = ", ".join(f'"{t}"' for t in topics)
    (root / "etc" / "device.toml").write_text(
        f'site = "{site}"\nagent = "{agent}"\ndata_dir = "{root / "data"}"\n\n'
        f'[nats]\nurl = "{nats["url"]}"\nca_file = "{nats["ca_file"]}"\n'
        f'creds_file = "{root / "etc" / "nats.creds"}"\n\n'
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

"""Simulated edge devices for deployment tests: a supervisor on a temporary root, which the
real `gateway cloud enroll` and `gateway deploy bootstrap` installed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from edge.supervisor.supervisor import Supervisor, SupervisorSettings
from gateway.servers import NatsServer
from tests.helpers import gateway


@dataclass(frozen=True, slots=True)
class Device:
    site: str
    agent: str
    root: Path


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What the operator has: the cloud's data dir, its NATS, the first bundle, the key."""

    cloud_dir: Path  # CloudSecurity's dir: tls/ca.pem, auth/
    cloud: NatsServer
    bundle: Path
    public_key: Path


async def _ok(*args: str) -> None:
    code, out, err = await gateway(*args)
    assert code == 0, f"gateway {' '.join(args)}: {err or out}"


async def bootstrap_device(
    base: Path, site: str, agent: str, how: Enrolment, mqtt_url: str, topics: list[str]
) -> Device:
    """Enrol `site/agent`, write its install script and run it (SYSROOT: the agent's user
    goes into base/sys/etc/passwd, the device root is base/<agent>, no systemctl)."""
    creds, script = base / f"{agent}.creds", base / f"install-{agent}.sh"
    root, sysroot = base / agent, base / f"sys-{agent}"
    await _ok("cloud", "enroll", "--data-dir", str(how.cloud_dir), "--site", site,
              "--agent", agent, "-o", str(creds))  # fmt: skip
    await _ok(
        "deploy", "bootstrap", "--site", site, "--agent", agent, "--nats-url", how.cloud.url,
        "--creds", str(creds), "--ca", str(how.cloud_dir / "tls" / "ca.pem"),
        "--key", str(how.public_key), "--bundle", str(how.bundle), "--mqtt-url", mqtt_url,
        *[a for t in topics for a in ("--topic", t)], "--root", str(root), "-o", str(script),
    )  # fmt: skip
    (sysroot / "etc").mkdir(parents=True)
    (sysroot / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (sysroot / "etc" / "group").write_text("root:x:0:\n")
    env = {**os.environ, "SYSROOT": str(sysroot), "PYTHON": sys.executable}
    proc = await asyncio.create_subprocess_exec(
        "sh", str(script), str(how.bundle), env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()
    # The operator's tuning for a test: short batches and heartbeats.
    toml = root / "etc" / "device.toml"
    toml.write_text(
        toml.read_text() + "\n[batch]\nlinger_ms = 100\n\n[uplink]\nheartbeat_s = 0.5\n"
    )
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

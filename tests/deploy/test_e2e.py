"""End to end: three devices (supervisors on temporary roots) while a fleet streams.

v1 is installed by `gateway cloud enroll` and the real `gateway deploy bootstrap` script,
v2 rolled out in a canary and a batch, v3 (whose agent never reports ready) is caught by
the canary, rolled back and halts the rollout, and a tampered
bundle is refused. Then every reading the fleet emitted is in TELEMETRY exactly once.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from firmware_sim.fleet import Fleet, FleetSettings
from nats.js.client import JetStreamContext

from app.verify import compare, read_telemetry
from deploy.buckets import ensure_buckets
from deploy.errors import BundleError, RolloutHalted
from deploy.fleet import fleet_rows
from deploy.publish import publish_bundle
from deploy.rollout import RolloutOptions, rollout
from devices.catalog import load_catalog
from gateway import records
from gateway.records import DeviceStatus
from gateway.servers import NatsServer
from tests.deploy.conftest import BundleFactory, build_wheel, copy_project
from tests.deploy.device import (
    AGENT_USER,
    Enrolment,
    agent_pid,
    bootstrap_device,
    device_base,
    supervising,
    uid_of,
)
from tests.helpers import eventually

SITE = "s1"
AGENTS = ["pi-1", "pi-2", "pi-3"]


def never_ready_wheel(tmp: Path) -> Path:
    """This project with one bug: the agent runs but never reports ready."""
    src = copy_project(tmp / "src")
    agent = src / "edge" / "agent.py"
    text = agent.read_text()
    assert "            self.ready.set()\n" in text
    agent.write_text(text.replace("            self.ready.set()\n", "            pass\n"))
    return build_wheel(src, tmp / "wheel")


def tamper(bundle: Path, out: Path) -> Path:
    """Flip one byte inside the first wheel of the bundle, in place of a copy."""
    out.write_bytes(bundle.read_bytes())
    with tarfile.open(out) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".whl"))
    with open(out, "r+b") as f:
        f.seek(member.offset_data + member.size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    return out


async def statuses(js: JetStreamContext) -> dict[str, DeviceStatus]:
    kv = await js.key_value(records.STATUS_BUCKET)
    out = {}
    for agent in AGENTS:
        try:
            entry = await kv.get(records.device_key(SITE, agent))
        except Exception:  # not reported yet
            continue
        if entry.value:
            out[agent] = DeviceStatus.decode(entry.value)
    return out


@pytest.fixture
def devices_dir() -> Iterator[Path]:
    with device_base() as d:
        yield d


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.skipif(os.geteuid() != 0, reason="the supervisor runs as root, the agent not")
async def test_rollout_canary_rollback_tamper_no_loss(
    tmp_path: Path,
    devices_dir: Path,
    cloud_server: NatsServer,
    edge_broker: NatsServer,
    js: JetStreamContext,
    keys: tuple[Path, Path],
    make_bundle: BundleFactory,
) -> None:
    await ensure_buckets(js)
    pub = keys[1]
    v1, v2 = make_bundle("1.0.0"), make_bundle("2.0.0")
    v3 = make_bundle("3.0.0", wheel=never_ready_wheel(tmp_path / "v3"))
    v4 = tamper(make_bundle("4.0.0"), tmp_path / "v4-tampered.bundle")
    for b in (v1, v2, v3):
        await publish_bundle(js, b, pub)
    with pytest.raises(BundleError) as not_published:  # publish checks every digest
        await publish_bundle(js, v4, pub)
    assert not_published.value.reason == "digest_mismatch"
    # Should it reach the store another way (a holder of admin credentials), the device
    # refuses it all the same.
    store = await js.object_store(records.BUNDLE_STORE)
    await store.put("4.0.0", v4.read_bytes())

    fleet = Fleet(
        FleetSettings("127.0.0.1", edge_broker.mqtt_port, devices=6, site=SITE, rate_hz=10.0),
        load_catalog(),
    )
    names = fleet.device_names()
    # Each device as an operator installs it: `gateway cloud enroll`, `gateway deploy
    # bootstrap` (its own creds and the CA, v1 installed offline), the script run as root.
    how = Enrolment(tmp_path / "cloud-security", cloud_server, v1, pub)
    devices = [
        await bootstrap_device(
            devices_dir,
            SITE,
            agent,
            how,
            edge_broker.mqtt_url,
            [f"sensors/+/{SITE}/{n}" for n in names[2 * i : 2 * i + 2]],
        )
        for i, agent in enumerate(AGENTS)
    ]
    for d in devices:
        device_cfg = tomllib.loads((d.root / "etc" / "device.toml").read_text())
        assert device_cfg["nats"]["ca_file"] == str(d.root / "etc" / "ca.pem")  # TLS
        assert device_cfg["nats"]["creds_file"] == str(d.root / "etc" / "nats.creds")
        assert (d.root / "etc" / "nats.creds").stat().st_uid == pwd.getpwnam(AGENT_USER).pw_uid
    fleet_stop = asyncio.Event()
    async with supervising(devices, health_timeout_s=20.0) as sups:
        # The bootstrapped v1 starts at once, each agent with its own identity over TLS.
        await eventually(
            lambda: statuses(js),
            lambda s: len(s) == 3 and all(x.state == records.HEALTHY for x in s.values()),
            timeout=60,
        )
        for sup in sups:  # the supervisor is root, its agent the unprivileged user
            pid = agent_pid(sup)
            assert pid is not None and uid_of(pid) == pwd.getpwnam(AGENT_USER).pw_uid
            assert uid_of(sup.pid) == 0
        await rollout(js, RolloutOptions("1.0.0", f"{SITE}/*", canary=0, step_timeout_s=90))
        # Every agent has a persistent MQTT session now: the fleet may start.
        fleet_task = asyncio.create_task(fleet.run(fleet_stop))
        try:
            await rollout(
                js,
                RolloutOptions("2.0.0", f"{SITE}/*", canary=1, batch_percent=50, step_timeout_s=90),
            )
            st = await statuses(js)
            assert {s.version for s in st.values()} == {"2.0.0"}

            with pytest.raises(RolloutHalted) as halted:
                await rollout(js, RolloutOptions("3.0.0", f"{SITE}/*", canary=1, step_timeout_s=90))
            assert list(halted.value.failures) == [f"{SITE}.pi-1"]
            assert "not healthy" in halted.value.failures[f"{SITE}.pi-1"]
            st = await statuses(js)
            assert st["pi-1"].state == records.ROLLED_BACK and st["pi-1"].version == "2.0.0"
            assert {s.version for s in st.values()} == {"2.0.0"}

            with pytest.raises(RolloutHalted) as refused:
                await rollout(js, RolloutOptions("4.0.0", f"{SITE}/*", canary=1, step_timeout_s=90))
            assert "digest_mismatch" in refused.value.failures[f"{SITE}.pi-1"]
            assert not (devices[0].root / "versions" / "4.0.0").exists()
            # pi-1 keeps 2.0.0 and the version before it; the failed 3.0.0 is removed
            kept = sorted(p.name for p in (devices[0].root / "versions").iterdir())
            assert kept == ["1.0.0", "2.0.0"]
            assert list((devices[0].root / "downloads").iterdir()) == []

            rows = {r.agent: r for r in await fleet_rows(js)}
            assert rows["pi-1"].version_desired == "2.0.0"  # the halted rollout set it back
            assert rows["pi-1"].version_actual == "2.0.0" and rows["pi-1"].online
            assert "4.0.0" in rows["pi-1"].last_error

            # Anti-rollback: an older signed version is refused unless forced.
            with pytest.raises(RolloutHalted) as older:
                await rollout(js, RolloutOptions("1.0.0", f"{SITE}/*", canary=1, step_timeout_s=60))
            assert "not newer than 2.0.0" in older.value.failures[f"{SITE}.pi-1"]
            assert (await statuses(js))["pi-1"].state == records.REFUSED
            # A signed 1.0.0 stored under the name 5.0.0: reported, not crash-looped.
            await store.put("5.0.0", v1.read_bytes())
            with pytest.raises(RolloutHalted) as mislabelled:
                await rollout(js, RolloutOptions("5.0.0", f"{SITE}/*", canary=1, step_timeout_s=60))
            assert "published as 5.0.0 but is 1.0.0" in mislabelled.value.failures[f"{SITE}.pi-1"]
            assert (await statuses(js))["pi-1"].version == "2.0.0"
            await asyncio.sleep(1.0)  # a little more streaming on the final versions
        finally:
            fleet_stop.set()
            await fleet_task
        report = await eventually(
            lambda: _report(js, fleet), lambda r: r.missing == 0, timeout=60, interval=0.5
        )
        # An agent that dies on its own is restarted by its supervisor. (Done once the
        # fleet has stopped: a reading in flight at a SIGKILL can be lost, see the report.)
        old = agent_pid(sups[1])
        assert old is not None
        os.kill(old, signal.SIGKILL)
        new = await eventually(
            lambda: _pid(sups[1]), lambda p: p not in (None, old), timeout=30, interval=0.2
        )
        assert new is not None and uid_of(new) == pwd.getpwnam(AGENT_USER).pw_uid
    assert report.emitted > 0
    assert report.missing == 0 and report.duplicates == 0 and report.altered == 0, report.summary()


async def _pid(sup: subprocess.Popen[bytes]) -> int | None:
    return agent_pid(sup)


async def _report(js: JetStreamContext, fleet: Fleet):  # type: ignore[no-untyped-def]
    return compare(fleet.truth, await read_telemetry(js))

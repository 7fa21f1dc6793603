"""With faults on, the whole path: fleet -> MQTT -> the real agent -> JetStream, then
`gateway verify` finds every valid reading stored once and exactly the deliberately
invalid ones as dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import orjson
import pytest
from firmware_sim.fleet import Fleet, FleetSettings
from firmware_sim.ground_truth import GroundTruth
from firmware_sim.profiles import Profile, get_profile
from firmware_sim.transports import TransportName
from nats.js.client import JetStreamContext

from app.verify import Report, compare, read_dead_letters, read_telemetry
from devices.catalog import load_catalog
from edge.agent import Agent
from gateway.config import AgentConfig
from gateway.servers import NatsServer
from tests.edge.test_agent_integration import agent_config, running
from tests.helpers import agent_nats, cli_nats, eventually

T = TypeVar("T")

# Every fault the JSON path can show (docs/wire-format.md, "Device payloads").
_FAULTS = {"link_drop": 0.03, "link_drop_s": 1.0, "broker_disconnect": 0.02, "garbage": 0.03}
_FAULTS |= {"truncated": 0.03, "nan": 0.03, "duplicate": 0.05, "clock_jump": 0.01, "reboot": 0.02}
_FAULTS |= {"out_of_range": 0.03}
JSON_CHAOS = Profile.model_validate({"fleet_percent": 60, "queue_max": 64, "faults": _FAULTS})


async def _run_fleet(
    tmp_path: Path,
    cloud_server: NatsServer,
    edge_broker: NatsServer,
    js: JetStreamContext,
    done: Callable[[Report], bool],
    transport: TransportName = "mqtt",
) -> Fleet:
    """Run a faulty JSON fleet through the agent; wait until `done` holds for the streams."""
    settings = FleetSettings(
        port=edge_broker.mqtt_port,
        devices=20,
        site="s1",
        rate_hz=5.0,
        seed=11,
        grace_s=15,
        transport=transport,
    )
    fleet = Fleet(settings, load_catalog(), JSON_CHAOS)
    cfg = agent_config(tmp_path, cloud_server, edge_broker.mqtt_port)
    async with running(Agent(cfg)):
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(8.0, stop.set)
        await fleet.run(stop)
        await eventually(lambda: _report(js, fleet.truth), done, timeout=45, interval=0.5)
    return fleet


async def _report(js: JetStreamContext, truth: GroundTruth) -> Report:
    return compare(truth, await read_telemetry(js), await read_dead_letters(js))


def _telemetry_ok(r: Report) -> bool:
    """Everything but the exact dead-letter count."""
    return r.missing == r.duplicates == r.altered == r.unexpected == r.invalid_stored == 0


@pytest.mark.parametrize("transport", ["mqtt", "mqtt-mux"])
async def test_faulty_fleet_telemetry_exact_through_agent(
    tmp_path: Path,
    cloud_server: NatsServer,
    edge_broker: NatsServer,
    js: JetStreamContext,
    transport: TransportName,
) -> None:
    fleet = await _run_fleet(tmp_path, cloud_server, edge_broker, js, _telemetry_ok, transport)
    report = await _report(js, fleet.truth)
    assert report.emitted > 500 and report.dead_unexpected == 0
    assert report.dead_found > 0 and report.noise_found > 0


# The agent names a dead letter `<agent>:<instance>:dl:<SQLite rowid>`. The rowid is
# reused once the dead_letters table empties (no AUTOINCREMENT in edge/buffer.py), so
# JetStream drops later dead letters as duplicates of earlier ones within its window.
@pytest.mark.slow
async def test_faulty_fleet_verifies_through_agent_and_jetstream(
    tmp_path: Path, cloud_server: NatsServer, edge_broker: NatsServer, js: JetStreamContext
) -> None:
    fleet = await _run_fleet(tmp_path, cloud_server, edge_broker, js, lambda r: r.ok)
    truth = fleet.truth
    report = await _report(js, truth)

    faults = fleet.engine.stats.faults
    for kind in ("garbage", "truncated", "nan", "duplicate", "broker_disconnect", "reboot"):
        assert faults[kind] > 0, f"no {kind} injected: {faults}"
    assert truth.invalid > 0 and truth.noise()
    assert report.emitted > 500 and report.missing == 0 and report.duplicates == 0
    assert report.dead_expected > 0 and report.dead_missing == 0
    assert report.noise_found == report.noise_expected > 0 and report.noise_missing == 0

    # The command line says the same, and says so when the truth disagrees.
    path = tmp_path / "truth.json"
    truth.save(path)
    cmd = [sys.executable, "-m", "app", "verify", "--truth", str(path)]
    cmd += [*cli_nats(cloud_server), "--json"]
    ok = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, timeout=60)
    assert ok.returncode == 0, ok.stderr.decode()
    assert orjson.loads(ok.stdout.splitlines()[-1])["ok"] is True

    dev = next(d for d in truth.devices.values() if d.count)
    dev.record_invalid(dev.last_seq, "nan")  # claim a stored reading should be dead
    truth.save(path)
    bad = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, timeout=60)
    assert bad.returncode == 1
    summary = orjson.loads(bad.stdout.splitlines()[-1])
    assert summary["invalid_stored"] == 1 and summary["dead_missing"] == 1


def _open_count(path: str) -> int:
    """How many file descriptors of this process are open on `path`."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}") == path
    return n


async def test_every_format_and_32_serial_devices_through_the_agent(
    tmp_path: Path, cloud_server: NatsServer, edge_broker: NatsServer, js: JetStreamContext
) -> None:
    """JSON, SenML and line protocol over MQTT, and 32 GPS trackers on their own ptys read
    by the agent at the same time, all with faults including out-of-range values."""
    chaos = get_profile("chaos").model_copy(update={"fleet_percent": 50.0})
    mqtt = Fleet(
        FleetSettings(
            port=edge_broker.mqtt_port, devices=16, site="s1", seed=21, rate_hz=2.0,
            types=("env_th", "power_meter", "air_quality", "vibration"), grace_s=15,
        ),
        load_catalog(),
        chaos,
    )  # fmt: skip
    gps = FleetSettings(
        devices=32, site="s1", seed=22, rate_hz=2.0, transport="serial", types=("gps_tracker",)
    )
    serial_fleet = Fleet(gps, load_catalog(), chaos)
    ports = serial_fleet.serial_ports()
    sources: list[dict[str, object]] = [
        {"url": f"mqtt://127.0.0.1:{edge_broker.mqtt_port}", "topics": [f"sensors/{f}/#"],
         "format": f, "client_id": f"agent-{f}"}
        for f in ("json", "senml", "line")
    ]  # fmt: skip
    sources += [{"type": "serial", "port": p, "format": "frame", "baudrate": 9600} for p in ports]
    cfg = AgentConfig.model_validate(
        {"site": "s1", "agent": "a1", "data_dir": str(tmp_path / "agent"),
         "nats": agent_nats(cloud_server), "sources": sources,
         "batch": {"max_readings": 500, "linger_ms": 50}}
    )  # fmt: skip
    async with running(Agent(cfg)):
        # Opening a serial port flushes what came before: start once the agent has them all.
        await eventually(
            lambda: _async([_open_count(p) for p in ports]), lambda c: min(c) >= 2, timeout=30
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(8.0, stop.set)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(mqtt.run(stop))
            tg.create_task(serial_fleet.run(stop))
        truth = mqtt.truth
        truth.devices.update(serial_fleet.truth.devices)
        report = await eventually(lambda: _report(js, truth), _telemetry_ok, 60, 0.5)

    gps_truth = [d for (_, name), d in truth.devices.items() if name.startswith("gps-")]
    assert len(gps_truth) == 32 and all(d.count > 0 for d in gps_truth)
    faults = mqtt.engine.stats.faults + serial_fleet.engine.stats.faults
    assert faults["out_of_range"] > 0 and faults["bad_checksum"] > 0
    assert report.emitted > 1000 and report.dead_unexpected == 0 and report.noise_unexpected == 0


async def _async(value: T) -> T:
    return value


def _ecosystem_sources(port: int) -> list[dict[str, object]]:
    """The ready profiles' own sources (config/devices/), pointed at the test broker."""
    from tests.edge.devices.profiles import profile_doc

    picked = [("tasmota", 0), ("zigbee2mqtt", 0), ("shelly", 1), ("sparkplug", 0)]
    return [
        {**profile_doc(name)["sources"][i], "url": f"mqtt://127.0.0.1:{port}",
         "client_id": f"agent-{name}"}
        for name, i in picked
    ]  # fmt: skip


async def test_ecosystem_fleet_verifies_through_the_ready_profiles(
    tmp_path: Path, cloud_server: NatsServer, edge_broker: NatsServer, js: JetStreamContext
) -> None:
    """Devices that publish like Tasmota, Zigbee2MQTT, Shelly Gen2 and a Sparkplug B edge
    node (firmware_sim/ecosystems.py), with faults on, into an agent running the ready
    profiles' sources: every valid reading stored once, every bad message a dead letter."""
    settings = FleetSettings(
        port=edge_broker.mqtt_port, devices=16, site="s1", rate_hz=1.0, seed=31, grace_s=15,
        types=("tasmota_th", "zigbee_th", "shelly_plug", "sparkplug_th"),
    )  # fmt: skip
    fleet = Fleet(settings, load_catalog(), JSON_CHAOS)
    cfg = AgentConfig.model_validate(
        {"site": "s1", "agent": "a1", "data_dir": str(tmp_path / "agent"),
         "nats": agent_nats(cloud_server), "sources": _ecosystem_sources(edge_broker.mqtt_port),
         "batch": {"max_readings": 500, "linger_ms": 50}}
    )  # fmt: skip
    async with running(Agent(cfg)):
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(10.0, stop.set)
        await fleet.run(stop)
        report = await eventually(
            lambda: _report(js, fleet.truth), lambda r: r.ok, timeout=45, interval=0.5
        )
    names = {name.split("-")[0] for _, name in fleet.truth.devices}
    assert names == {"tas", "z2m", "shellyplus1pm", "spb"}
    assert all(d.count > 0 for d in fleet.truth.devices.values())
    faults = fleet.engine.stats.faults
    assert faults["garbage"] > 0 and faults["nan"] > 0 and faults["reboot"] > 0, faults
    assert report.emitted > 200 and report.missing == report.duplicates == 0
    assert report.noise_found == report.noise_expected > 0 and report.dead_unexpected == 0

    path = tmp_path / "truth.json"  # `gateway verify` itself says the same
    fleet.truth.save(path)
    cmd = [sys.executable, "-m", "app", "verify", "--truth", str(path)]
    done = await asyncio.to_thread(
        subprocess.run, [*cmd, *cli_nats(cloud_server), "--json"], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert orjson.loads(done.stdout.splitlines()[-1])["ok"] is True

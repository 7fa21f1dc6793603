"""Pushed settings reach the running parts: each takes its section through `reconfigure`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.js.client import JetStreamContext

from deploy.buckets import ensure_buckets
from deploy.config_push import push_config
from devices.catalog import load_catalog
from edge.agent import Agent
from edge.buffer import SqliteBuffer, StoredBatch
from edge.intake import Intake
from edge.metrics import AgentMetrics
from edge.sources import registry
from edge.uplink import Uplink
from gateway import config
from gateway.config import AgentConfig, UplinkSettings
from gateway.servers import NatsServer
from tests.edge.test_agent_integration import agent_config, running
from tests.helpers import eventually, json_payloads, publish_qos1

_UPLINK_PUSH = """
[uplink]
max_batches_per_round = 1
max_window_bytes = 65536
publish_timeout_s = 1.5
backoff_first_s = 0.3
backoff_max_s = 0.6

[buffer]
max_bytes = 1048576
"""


def _record_reads(buf: SqliteBuffer) -> list[tuple[int, int | None]]:
    """Spy on the uplink's reads: (limit, max_bytes) of each `oldest_batches` call."""
    calls: list[tuple[int, int | None]] = []
    read: Callable[..., list[StoredBatch]] = buf.oldest_batches

    def spy(limit: int, after_row: int = 0, max_bytes: int | None = None) -> list[StoredBatch]:
        calls.append((limit, max_bytes))
        return read(limit, after_row, max_bytes=max_bytes)

    buf.oldest_batches = spy  # type: ignore[method-assign]
    return calls


async def test_a_pushed_uplink_section_takes_effect_in_the_running_agent(
    tmp_path: Path, cloud_server: NatsServer, edge_broker: NatsServer, js: JetStreamContext
) -> None:
    await ensure_buckets(js)
    cfg = agent_config(tmp_path, cloud_server, edge_broker.mqtt_port)
    async with running(Agent(cfg)) as agent:
        backoff = agent.uplink.backoff
        reads = _record_reads(agent.buffer)
        rev = (await push_config(js, "s1/a1", _UPLINK_PUSH))["s1.a1"]
        await eventually(lambda: _revision(agent), lambda r: r == rev)
        reads.clear()

        payloads = json_payloads("d1", range(1, 201))  # 4 batches of 50
        await asyncio.to_thread(publish_qos1, edge_broker.mqtt_port, "sensors/s1/d1", payloads)
        await eventually(lambda: _published(agent), lambda n: n >= 200)

        assert reads and set(reads) == {(1, 65536)}  # one batch per window, the new cap
        assert agent.uplink.settings.publish_timeout_s == 1.5
        assert agent.uplink.backoff is not backoff
        assert (agent.uplink.backoff.first, agent.uplink.backoff.cap) == (0.3, 0.6)
        assert agent.buffer.max_bytes == 1 << 20


async def _revision(agent: Agent) -> int:
    return agent.remote.revision


async def _published(agent: Agent) -> int:
    return agent.uplink.stats.readings_published


def _agent_config(**sections: object) -> AgentConfig:
    return config.parse(AgentConfig, {"site": "s", "agent": "a", **sections})


def test_uplink_keeps_its_backoff_unless_the_backoff_settings_change(tmp_path: Path) -> None:
    buf = SqliteBuffer(tmp_path / "b.sqlite3", max_bytes=1 << 20)
    up = Uplink("s", "a", UplinkSettings(), buf, asyncio.Event())
    first = up.backoff
    up.reconfigure(UplinkSettings(publish_timeout_s=9.0))
    assert up.backoff is first and up.settings.publish_timeout_s == 9.0
    up.reconfigure(UplinkSettings(backoff_max_s=1.0))
    assert up.backoff is not first and up.backoff.cap == 1.0


def test_intake_rebuilds_only_the_sections_that_changed() -> None:
    deadband = {"type": "deadband", "absolute": 1.0}
    cfg = _agent_config(filters=[deadband])
    intake = Intake(cfg, load_catalog(), AgentMetrics())
    validator, chain = intake.validator, intake.filters

    intake.reconfigure(_agent_config(filters=[deadband], validation={"out_of_range": "flag"}))
    assert intake.validator is not validator and intake.filters is chain  # its state kept

    intake.reconfigure(_agent_config(validation={"out_of_range": "flag"}))
    assert not intake.filters


def test_the_registry_builds_each_configured_source() -> None:
    cfg = _agent_config(sources=[{"type": "mqtt"}, {"type": "serial", "port": "/dev/null"}])
    ctx = registry.SourceContext("x0", "gw-s-a", lambda _msg: None)
    built = [registry.build(s, ctx) for s in cfg.sources]
    assert [type(s).__name__ for s in built] == ["MqttSource", "SerialSource"]


def test_an_unregistered_source_type_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="no source for UplinkSettings"):
        registry.build(UplinkSettings(), registry.SourceContext("x", "c", print))  # type: ignore[arg-type]

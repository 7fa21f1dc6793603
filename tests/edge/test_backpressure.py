"""Overflow policy `block` on a serial source: the agent stops reading the port while its
buffer is full, so the device's writes stall (on a pty, `write` blocks), and everything
arrives once the cloud is back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cloud.streams import ensure_streams
from edge.agent import Agent
from edge.sources.serial import SerialSource
from gateway import config
from gateway.config import AgentConfig, StreamSettings
from gateway.connect import nats_connection
from gateway.servers import NatsServer
from tests.edge.test_agent_integration import running
from tests.edge.test_mqtt_source import stream_seqs
from tests.edge.test_serial_source import Adapter, frames
from tests.helpers import agent_nats, cloud_security, eventually

FRAMES = 12_000


async def _state(agent: Agent, source: SerialSource) -> tuple[bool, int]:
    return source.paused, agent.stats.messages


async def test_block_policy_pauses_serial_reads_until_the_uplink_drains(
    tmp_path: Path,
) -> None:
    cloud = NatsServer(tmp_path / "cloud", name="cloud", security=cloud_security(tmp_path))
    await cloud.start()
    await cloud.stop()  # known address, nothing listening: the agent can only buffer
    link = tmp_path / "ttyUSB-sensor"
    adapter = Adapter(link)
    adapter.plug()
    cfg = config.parse(
        AgentConfig,
        {
            "site": "s1",
            "agent": "a1",
            "data_dir": str(tmp_path / "agent"),
            "nats": agent_nats(cloud),
            "sources": [{"type": "serial", "port": str(link)}],
            "batch": {"max_readings": 100, "linger_ms": 20},
            "buffer": {"max_bytes": 1 << 16, "overflow": "block"},
        },
    )
    try:
        async with running(Agent(cfg)) as agent:
            source = agent.sources[0]
            assert isinstance(source, SerialSource)
            await asyncio.wait_for(source.connected.wait(), 10)
            writer = asyncio.create_task(
                asyncio.to_thread(adapter.write, frames(range(1, FRAMES + 1)))
            )
            _, taken = await eventually(lambda: _state(agent, source), lambda s: s[0], timeout=60)
            assert taken < FRAMES and not writer.done()  # the device is held back
            assert agent.stats.dead_letters == {}
            await cloud.start()
            async with nats_connection(cloud.client(), "test") as nc:
                js = nc.jetstream()
                await ensure_streams(js, StreamSettings())
                await asyncio.wait_for(writer, 60)
                seqs = await eventually(
                    lambda: stream_seqs(js), lambda s: len(s) >= FRAMES, timeout=60
                )
            assert seqs == list(range(1, FRAMES + 1))
            assert not source.paused
            assert agent.snapshot().accounting["reconciles"]
    finally:
        await cloud.stop()
        adapter.unplug()

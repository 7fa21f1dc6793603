"""The agent against real servers: nats-server as MQTT broker and as JetStream cloud."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from nats.js.client import JetStreamContext

from app.verify import read_telemetry
from cloud.streams import ensure_streams
from edge.agent import Agent
from gateway import config, envelope, subjects
from gateway.config import AgentConfig, StreamSettings
from gateway.connect import connect
from gateway.servers import NatsServer
from tests.helpers import (
    agent_nats,
    cloud_security,
    eventually,
    json_payloads,
    publish_qos1,
    reading,
)


def agent_config(tmp_path: Path, cloud: NatsServer, mqtt_port: int) -> AgentConfig:
    """Agent s1/a1, enrolled with its own credentials, TLS to `cloud`."""
    return config.parse(
        AgentConfig,
        {
            "site": "s1",
            "agent": "a1",
            "data_dir": str(tmp_path / "agent"),
            "nats": agent_nats(cloud),
            "sources": [{"url": f"mqtt://127.0.0.1:{mqtt_port}", "topics": ["sensors/#"]}],
            "batch": {"max_readings": 50, "linger_ms": 50},
        },
    )


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.ready.wait(), 20)
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _seqs_in_stream(js: JetStreamContext) -> list[int]:
    contents = await read_telemetry(js)
    return sorted(int(s) for parts in contents.seqs.values() for arr in parts for s in arr)


async def test_readings_reach_jetstream_once_with_envelope(
    tmp_path: Path, cloud_server: NatsServer, edge_broker: NatsServer, js: JetStreamContext
) -> None:
    cfg = agent_config(tmp_path, cloud_server, edge_broker.mqtt_port)
    async with running(Agent(cfg)):
        await asyncio.to_thread(
            publish_qos1, edge_broker.mqtt_port, "sensors/s1/d1", json_payloads("d1", range(1, 201))
        )
        seqs = await eventually(lambda: _seqs_in_stream(js), lambda s: len(s) >= 200)
    assert seqs == list(range(1, 201))
    msg = await js.get_msg(subjects.TELEMETRY_STREAM, 1)
    headers = msg.headers or {}
    for name in (
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "ce-dataschema",
        "Nats-Msg-Id",
    ):
        assert headers.get(name), name
    assert headers["ce-type"] == envelope.BATCH_TYPE
    assert headers["ce-id"] == headers["Nats-Msg-Id"]
    assert msg.subject == "telemetry.s1.a1"


async def test_batch_survives_agent_restart_and_is_published_once(
    tmp_path: Path, edge_broker: NatsServer
) -> None:
    # The cloud is down while the agent runs: readings can only go to the durable buffer.
    cloud = NatsServer(tmp_path / "cloud", name="cloud", security=cloud_security(tmp_path))
    await cloud.start()
    await cloud.stop()
    cfg = agent_config(tmp_path, cloud, edge_broker.mqtt_port)
    agent = Agent(cfg)
    async with running(agent):
        await asyncio.to_thread(
            publish_qos1, edge_broker.mqtt_port, "sensors/s1/d1", json_payloads("d1", range(1, 101))
        )
        await eventually(lambda: _buffered(agent), lambda n: n == 100)
    # Stopped with everything buffered. A crash after a PubAck but before the delete is
    # simulated by publishing the first buffered batch ourselves, with its id, first.
    probe = Agent(cfg)
    probe.buffer.open()
    first = probe.buffer.oldest_batches(1)[0]
    probe.buffer.close()
    await cloud.start()
    try:
        nc = await connect(cloud.client(), "test")
        js = nc.jetstream()
        await ensure_streams(js, StreamSettings())
        await js.publish(
            subjects.telemetry("s1", "a1"), first.payload, headers={"Nats-Msg-Id": first.batch_id}
        )
        async with running(Agent(cfg)) as again:
            seqs = await eventually(lambda: _seqs_in_stream(js), lambda s: len(s) >= 100)
            await eventually(lambda: _buffered(again), lambda n: n == 0)
            assert again.uplink.stats.duplicate_acks == 1
        assert seqs == list(range(1, 101))  # each reading exactly once
        await nc.close()
    finally:
        await cloud.stop()


async def _buffered(agent: Agent) -> int:
    return agent.buffer.stats().readings


async def test_a_device_that_restarts_its_seqs_loses_nothing(
    tmp_path: Path, cloud_server: NatsServer, edge_broker: NatsServer, js: JetStreamContext
) -> None:
    """Issue 12: a device that reboots and numbers from 1 again lost every reading below
    its old high-water mark (20 of 20), counted as duplicates. Messages published again
    are new messages (DUP=0): kept, and none is counted as a redelivery."""
    cfg = agent_config(tmp_path, cloud_server, edge_broker.mqtt_port)
    async with running(Agent(cfg)) as agent:
        before = json_payloads("d1", range(1, 41))
        await asyncio.to_thread(publish_qos1, edge_broker.mqtt_port, "sensors/s1/d1", before)
        await eventually(lambda: _seqs_in_stream(js), lambda s: len(s) >= 40)
        later = 1_700_000_000_000_000_000 + 10**9  # its clock went on
        rebooted = [orjson.dumps(reading("d1", q, 1.0, time_ns=later)) for q in range(1, 21)]
        await asyncio.to_thread(publish_qos1, edge_broker.mqtt_port, "sensors/s1/d1", rebooted)
        seqs = await eventually(lambda: _seqs_in_stream(js), lambda s: len(s) >= 60)
        assert await _dups(agent) == 0
        report = agent.snapshot().accounting
    assert seqs == sorted([*range(1, 41), *range(1, 21)])
    assert report["reconciles"] and report["sources"]["mqtt0"]["received"] == 60


async def _dups(agent: Agent) -> int:
    return agent.stats.duplicates_dropped


@pytest.mark.parametrize("bad", [b"{garbage", b'{"site":"s1"}'])
async def test_bad_payload_becomes_a_dead_letter_in_dlq(
    tmp_path: Path,
    cloud_server: NatsServer,
    edge_broker: NatsServer,
    js: JetStreamContext,
    bad: bytes,
) -> None:
    cfg = agent_config(tmp_path, cloud_server, edge_broker.mqtt_port)
    async with running(Agent(cfg)) as agent:
        await asyncio.to_thread(
            publish_qos1,
            edge_broker.mqtt_port,
            "sensors/s1/d1",
            [bad, *json_payloads("d1", range(1, 3))],
        )
        await eventually(lambda: _seqs_in_stream(js), lambda s: len(s) >= 2)
        info = await eventually(
            lambda: js.stream_info(subjects.DLQ_STREAM), lambda i: i.state.messages == 1
        )
        assert sum(agent.stats.dead_letters.values()) == 1
    msg = await js.get_msg(subjects.DLQ_STREAM, info.state.first_seq)
    assert msg.data == bad
    assert (msg.headers or {}).get("Gateway-Dead-Letter-Reason") in (
        "invalid_json",
        "missing_field",
    )

"""The agent fed by both edge brokers it supports: nats-server's MQTT listener and a real
Mosquitto process. One test body, run against each (one suite for every implementation)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.js.client import JetStreamContext

from edge.agent import Agent
from gateway import config
from gateway.config import AgentConfig
from gateway.servers import NatsServer
from tests.conftest import mosquitto_binary
from tests.edge.test_agent_integration import _seqs_in_stream, running
from tests.helpers import agent_nats, eventually, json_payloads, publish_qos1
from tests.mosquitto import Mosquitto

NOW_NS = 1_800_000_000_000_000_000


@pytest.fixture(params=["nats-mqtt", "mosquitto"])
async def broker_port(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[int]:
    if request.param == "nats-mqtt":
        server = NatsServer(tmp_path / "edge", name="edge", mqtt=True)
        await server.start()
        try:
            yield server.mqtt_port
        finally:
            await server.stop()
        return
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    mosq = Mosquitto(tmp_path / "mosquitto")
    await mosq.start()
    try:
        yield mosq.port
    finally:
        await mosq.stop()


def make_config(tmp_path: Path, cloud: NatsServer, port: int, **extra: Any) -> AgentConfig:
    raw: dict[str, Any] = {
        "site": "s1",
        "agent": "a1",
        "data_dir": str(tmp_path / "agent"),
        "nats": agent_nats(cloud),
        "sources": [{"url": f"mqtt://127.0.0.1:{port}", "topics": ["sensors/#"]}],
        "batch": {"max_readings": 500, "linger_ms": 20},
        "metrics": {"port": 0},
    }
    raw.update(extra)
    return config.parse(AgentConfig, raw)


async def stream_seqs(js: JetStreamContext) -> list[int]:
    return await _seqs_in_stream(js)


async def test_broker_feeds_agent_in_every_format(
    tmp_path: Path, broker_port: int, cloud_server: NatsServer, js: JetStreamContext
) -> None:
    cfg = make_config(
        tmp_path,
        cloud_server,
        broker_port,
        sources=[
            {"url": f"mqtt://127.0.0.1:{broker_port}", "topics": ["json/#"]},
            {"url": f"mqtt://127.0.0.1:{broker_port}", "topics": ["senml/+"], "format": "senml"},
            {"url": f"mqtt://127.0.0.1:{broker_port}", "topics": ["lp/#"], "format": "line"},
        ],
    )
    senml = [
        orjson.dumps(
            [{"bn": "dev-s/", "bt": NOW_NS // 10**9, "bu": "Cel"}]
            + [{"n": "temperature", "v": 20 + i, "t": i, "seq": 100 + i} for i in range(5)]
        )
    ]
    line = [b"temperature,device=dev-l,unit=Cel value=21.5,seq=200i %d" % NOW_NS]
    async with running(Agent(cfg)):
        await asyncio.to_thread(
            publish_qos1, broker_port, "json/s1/d1", json_payloads("d1", range(1, 51))
        )
        await asyncio.to_thread(publish_qos1, broker_port, "senml/dev-s", senml, "pub-senml")
        await asyncio.to_thread(publish_qos1, broker_port, "lp/x", line, "pub-lp")
        seqs = await eventually(lambda: stream_seqs(js), lambda s: len(s) >= 56)
    assert seqs == [*range(1, 51), *range(100, 105), 200]


async def test_readings_published_while_agent_is_stopped_arrive_after_restart(
    tmp_path: Path, broker_port: int, cloud_server: NatsServer, js: JetStreamContext
) -> None:
    cfg = make_config(tmp_path, cloud_server, broker_port)
    async with running(Agent(cfg)):  # first run: creates the persistent session
        await asyncio.to_thread(
            publish_qos1, broker_port, "sensors/s1/d1", json_payloads("d1", range(1, 11))
        )
        await eventually(lambda: stream_seqs(js), lambda s: len(s) >= 10)
    # The agent is down: the broker must queue these for its session.
    await asyncio.to_thread(
        publish_qos1, broker_port, "sensors/s1/d1", json_payloads("d1", range(11, 511))
    )
    async with running(Agent(cfg)):
        seqs = await eventually(lambda: stream_seqs(js), lambda s: len(s) >= 510, timeout=60)
    assert seqs == list(range(1, 511))


async def test_agent_reconnects_when_the_broker_restarts(
    tmp_path: Path, cloud_server: NatsServer, js: JetStreamContext
) -> None:
    broker = NatsServer(tmp_path / "edge", name="edge", mqtt=True)
    await broker.start()
    try:
        cfg = make_config(tmp_path, cloud_server, broker.mqtt_port)
        async with running(Agent(cfg)) as agent:
            await asyncio.to_thread(
                publish_qos1, broker.mqtt_port, "sensors/s1/d1", json_payloads("d1", range(1, 51))
            )
            await eventually(lambda: stream_seqs(js), lambda s: len(s) >= 50)
            await broker.restart()  # same port; the session is kept in its JetStream
            source = agent.sources[0]
            await eventually(_connected(source), lambda c: c, timeout=60)
            await asyncio.to_thread(
                publish_qos1, broker.mqtt_port, "sensors/s1/d1", json_payloads("d1", range(51, 101))
            )
            seqs = await eventually(lambda: stream_seqs(js), lambda s: len(s) >= 100)
        assert seqs == list(range(1, 101))
    finally:
        await broker.stop()


def _connected(source: object) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return bool(getattr(source, "connected", False))

    return probe

"""An MQTT broker that does not answer must not freeze the agent's event loop, nor keep
the agent from stopping.

paho's `connect()` blocks for up to its 5 s timeout; edge/sources/mqtt.py first finds out
without blocking whether the broker answers. The silent broker here is a loopback socket
whose accept queue is full, so the kernel drops further SYNs and a connect hangs, as it
does towards a powered-off host on the LAN.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.agent import Agent
from edge.sources import SourceMessage
from edge.sources.mqtt import MqttSource
from gateway import config
from gateway.config import AgentConfig, MqttSourceSettings
from tests.helpers import eventually, worst_loop_stall


@pytest.fixture
def silent_port() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    held = socket.create_connection(("127.0.0.1", port))  # fills the accept queue
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        try:
            probe.connect(("127.0.0.1", port))
        except TimeoutError:  # the kernel leaves SYNs unanswered: a silent broker
            yield port
        else:
            pytest.skip("this kernel accepts connections beyond a full accept queue")
    finally:
        for s in (probe, held, server):
            s.close()


async def test_a_silent_broker_does_not_block_the_loop(silent_port: int) -> None:
    got: list[SourceMessage] = []
    settings = MqttSourceSettings(url=f"mqtt://127.0.0.1:{silent_port}")
    source = MqttSource("mqtt0", settings, "gw-test", got.append)
    await source.start()
    try:
        worst = await worst_loop_stall(2.0)
    finally:
        await source.stop()
    assert not source.connected and not got
    assert worst < 0.5, f"the loop stalled for {worst:.2f}s"


async def test_an_agent_whose_broker_is_down_stops_when_told(
    tmp_path: Path, silent_port: int
) -> None:
    cfg = config.parse(
        AgentConfig,
        {
            "site": "s",
            "agent": "a",
            "data_dir": str(tmp_path / "agent"),
            "nats": {"url": f"nats://127.0.0.1:{silent_port}"},
            "sources": [{"url": f"mqtt://127.0.0.1:{silent_port}", "topics": ["x/#"]}],
        },
    )
    agent, stop = Agent(cfg), asyncio.Event()
    task = asyncio.create_task(agent.run(stop))

    async def sources() -> int:
        return len(agent.sources)

    await eventually(sources, lambda n: n == 1, timeout=10)  # started, trying the broker
    assert not task.done() and not agent.ready.is_set()
    stop.set()
    started = time.monotonic()
    await asyncio.wait_for(task, timeout=10)  # it waited for the broker forever before
    assert time.monotonic() - started < 3.0

"""Sparkplug B through a real broker (nats-server's MQTT listener and Mosquitto) into a real
agent running the `config/devices/sparkplug.toml` profile: a simulated edge node
(firmware_sim.sparkplug_node) births, sends aliased DDATA, drops a `seq`, sees the agent's
NCMD rebirth request and rebirths, then dies (its will, NDEATH). Every reading arrives once,
the death is an `online` = 0 reading for the node and its device, and the agent's stats
count births, the gap, the request and the death."""

from __future__ import annotations

import asyncio
import queue
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from firmware_sim.sparkplug_node import NodeMessage, SparkplugNode
from nats.js.client import JetStreamContext
from paho.mqtt.enums import CallbackAPIVersion

from edge.agent import Agent
from gateway.servers import NatsServer
from tests.edge.devices.profiles import profile_config
from tests.edge.devices.stream import stored_readings
from tests.edge.test_agent_integration import running
from tests.edge.test_mqtt_source import broker_port
from tests.helpers import eventually

__all__ = ["broker_port"]  # the fixture: both edge brokers

GROUP, NODE, DEVICE = "plant1", "node1", "pump"
METRICS = ["Temperature", "Flow"]
NODE_TOKEN, DEVICE_TOKEN = "node1", "node1__2Fpump"


class NodeClient:
    """The edge node's own MQTT connection: NDEATH as its will, NCMD subscribed."""

    def __init__(
        self, port: int, node: SparkplugNode, group: str = GROUP, edge_node: str = NODE
    ) -> None:
        self.node = node
        self.commands: queue.Queue[bytes] = queue.Queue()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"edge-{edge_node}"
        )
        death = node.death()
        self.client.will_set(death.topic, death.payload, qos=1)
        self.client.on_message = lambda _c, _u, msg: self.commands.put(bytes(msg.payload))
        subscribed = queue.Queue[int]()
        self.client.on_subscribe = lambda _c, _u, mid, _codes, _p: subscribed.put(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"spBv1.0/{group}/NCMD/{edge_node}", qos=1)
        subscribed.get(timeout=10)

    def send(self, messages: list[NodeMessage]) -> None:
        infos = [self.client.publish(m.topic, m.payload, qos=1) for m in messages]
        for info in infos:
            info.wait_for_publish(timeout=10)
            assert info.is_published()

    def die(self) -> None:
        """Lose the connection without a DISCONNECT: the broker publishes the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert sock is not None
        sock.close()


def _values(t: int) -> dict[tuple[str, str], float]:
    return {(DEVICE, "Temperature"): 20.5 + t % 100 / 10, (DEVICE, "Flow"): 1.25 + t % 100}


async def test_edge_node_lifecycle_through_a_real_broker(
    tmp_path: Path, broker_port: int, cloud_server: NatsServer, js: JetStreamContext
) -> None:
    cfg = profile_config("sparkplug", tmp_path, cloud_server, broker_port)
    node = SparkplugNode(GROUP, NODE, {DEVICE: METRICS})
    t0 = int(time.time() * 1000)
    want: list[tuple[str, str, float, int | None]] = []

    def birth(t: int) -> list[NodeMessage]:
        want.append((NODE_TOKEN, "online", 1.0, t))
        want.append((DEVICE_TOKEN, "online", 1.0, t))
        want.extend((DEVICE_TOKEN, m.lower(), v, t) for (_, m), v in _values(t).items())
        return node.birth(t, _values(t))

    def data(t: int) -> NodeMessage:
        values = {"Temperature": 30.0 + t % 50, "Flow": 5.0 + t % 1000}
        want.extend((DEVICE_TOKEN, m.lower(), v, t) for m, v in values.items())
        return node.data(DEVICE, t, values)

    async with running(Agent(cfg)) as agent:
        edge = await asyncio.to_thread(NodeClient, broker_port, node)
        try:
            await asyncio.to_thread(edge.send, [*birth(t0), *(data(t0 + i) for i in range(1, 6))])
            node.skip_seq()  # a lost message: the agent must ask for a rebirth
            await asyncio.to_thread(edge.send, [data(t0 + 6)])
            request = await asyncio.to_thread(edge.commands.get, True, 20)
            assert SparkplugNode.is_rebirth_request(request)
            await asyncio.to_thread(edge.send, [*birth(t0 + 7), data(t0 + 8)])
        finally:
            await asyncio.to_thread(edge.die)
        want.append((NODE_TOKEN, "online", 0.0, None))  # NDEATH: no timestamp, receive time
        want.append((DEVICE_TOKEN, "online", 0.0, None))
        got = await eventually(lambda: stored_readings(js), lambda rs: len(rs) >= len(want))
        await asyncio.sleep(0)
        stats = agent.stats
    rows = sorted((r.device, r.metric, r.value, r.time_ns // 1_000_000) for r in got)
    died = [r for r in rows if r[1] == "online" and r[2] == 0.0]
    assert len(died) == 2 and all(r[3] >= t0 for r in died)
    expected = sorted((d, m, v, t) for d, m, v, t in want if t is not None)
    assert [r for r in rows if r not in died] == expected  # each reading once, none lost
    assert {(r.site, r.metric, r.unit) for r in got} == {
        ("s1", "online", ""),
        ("s1", "flow", ""),
        ("s1", "temperature", "Cel"),
    }
    assert sum(stats.dead_letters.values()) == 0, stats.dead_letters
    assert stats.device_events == {
        "node_births": 2,
        "device_births": 2,
        "seq_gaps": 1,
        "rebirth_requests_seq_gap": 1,
        "node_deaths": 1,
    }


@pytest.mark.parametrize("broker_port", ["mosquitto"], indirect=True)
async def test_data_before_a_birth_is_a_dead_letter_and_a_rebirth_request(
    tmp_path: Path, broker_port: int, cloud_server: NatsServer, js: JetStreamContext
) -> None:
    cfg = profile_config("sparkplug", tmp_path, cloud_server, broker_port)
    node = SparkplugNode(GROUP, NODE, {DEVICE: METRICS})
    node.birth(0, _values(0))  # births the agent never sees (it started later)
    async with running(Agent(cfg)) as agent:
        edge = await asyncio.to_thread(NodeClient, broker_port, node)
        try:
            await asyncio.to_thread(edge.send, [node.data(DEVICE, 1, {"Flow": 2.0})])
            request = await asyncio.to_thread(edge.commands.get, True, 20)
            assert SparkplugNode.is_rebirth_request(request)
            stats = await eventually(
                lambda: asyncio.sleep(0, agent.stats), lambda s: s.dead_letters["no_birth"] == 1
            )
        finally:
            await asyncio.to_thread(edge.die)
    assert stats.device_events["rebirth_requests_no_birth"] == 1


async def test_umh_vectors_through_a_real_broker_and_agent(
    tmp_path: Path, broker_port: int, cloud_server: NatsServer, js: JetStreamContext
) -> None:
    """benthos-umh's verbatim vectors (tests/edge/devices/samples/README.md): birth, data by
    alias, a seq gap (the agent's NCMD reaches the node's topic), a stale NDEATH."""
    from tests.edge.devices.test_sparkplug_decoder import UMH_T_NS, umh

    cfg = profile_config("sparkplug", tmp_path, cloud_server, broker_port)
    node = SparkplugNode("DeviceLevelTest", "node1", {})
    async with running(Agent(cfg)) as agent:
        edge = await asyncio.to_thread(NodeClient, broker_port, node, "DeviceLevelTest", "node1")
        try:
            msgs = [umh("nbirth"), umh("ndata"), umh("gap")]
            await asyncio.to_thread(edge.send, msgs)
            assert SparkplugNode.is_rebirth_request(
                await asyncio.to_thread(edge.commands.get, True, 20)
            )
            await asyncio.to_thread(edge.send, [umh("ndeath")])
            got = await eventually(lambda: stored_readings(js), lambda rs: len(rs) >= 4)
            stats = await eventually(
                lambda: asyncio.sleep(0, agent.stats), lambda s: s.messages >= 4
            )
            events = dict(stats.device_events)  # before the node's own will arrives
        finally:
            await asyncio.to_thread(edge.die)
    assert sorted((r.device, r.metric, r.value, r.unit, r.time_ns) for r in got) == [
        ("node1", "online", 1.0, "", UMH_T_NS),
        ("node1", "temperature", 21.5, "Cel", UMH_T_NS),
        ("node1", "temperature", 22.5, "Cel", UMH_T_NS),
        ("node1", "temperature", 27.0, "Cel", UMH_T_NS),
    ]
    assert events == {"node_births": 1, "seq_gaps": 1, "rebirth_requests_seq_gap": 1,
                      "stale_deaths": 1}  # fmt: skip

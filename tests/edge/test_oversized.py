"""Issue 12: one message of about 1 MiB stopped the uplink for good (its dead letter,
with headers, passed the cloud's max_payload; nats-server closed the connection and
nats-py stayed closed), and 16 MiB through Mosquitto was retried forever. Now the uplink
learns max_payload from the server and cuts a dead letter to fit, keeping its original
size and SHA-256 in headers; the readings around it arrive within 10 s. Through
nats-server's MQTT listener a 16 MiB message is refused by the broker itself: the readings
around it arrive all the same."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from nats.js.client import JetStreamContext
from paho.mqtt.enums import CallbackAPIVersion

from edge.agent import Agent
from gateway import subjects
from gateway.deadletter import ORIGINAL_DIGEST, ORIGINAL_SIZE, DeadLetterHeaders
from gateway.servers import NatsServer
from tests.edge.test_agent_integration import running
from tests.edge.test_mqtt_source import broker_port, make_config, stream_seqs
from tests.helpers import eventually, json_payloads, publish_qos1

__all__ = ["broker_port"]  # the fixture, shared with the MQTT source's suite

NEAR_1_MIB = 1_048_000  # passes nats-server's MQTT listener (max_payload 1 MiB) with its topic


@pytest.mark.parametrize("size", [NEAR_1_MIB, 16 << 20])
async def test_oversized_message_is_a_cut_dead_letter_and_blocks_nothing(
    tmp_path: Path,
    cloud_server: NatsServer,
    js: JetStreamContext,
    broker_port: int,
    request: pytest.FixtureRequest,
    size: int,
) -> None:
    if size > NEAR_1_MIB and "nats-mqtt" in request.node.callspec.id:
        await _refused_by_the_broker(tmp_path, cloud_server, js, broker_port, size)
        return
    big = b"x" * size  # not JSON: a dead letter with the whole payload
    topic = "sensors/s1/d1"
    cfg = make_config(tmp_path, cloud_server, broker_port)
    async with running(Agent(cfg)) as agent:
        msgs = [*json_payloads("d1", range(1, 6)), big, *json_payloads("d1", range(6, 11))]
        await asyncio.to_thread(publish_qos1, broker_port, topic, msgs)
        seqs = await eventually(lambda: stream_seqs(js), lambda s: len(s) >= 10, timeout=10)
        info = await eventually(
            lambda: js.stream_info(subjects.DLQ_STREAM), lambda i: i.state.messages >= 1
        )
        msg = await js.get_msg(subjects.DLQ_STREAM, info.state.first_seq)
        assert agent.uplink.stats.truncated_dead_letters == 1
        assert agent.snapshot().accounting["reconciles"]
    assert seqs == list(range(1, 11))
    headers = msg.headers or {}
    assert DeadLetterHeaders.from_headers(headers).reason == "invalid_json"
    assert headers[ORIGINAL_SIZE] == str(size)
    assert headers[ORIGINAL_DIGEST] == hashlib.sha256(big).hexdigest()
    assert msg.data is not None and big.startswith(msg.data) and len(msg.data) < size


def _publish_refused(port: int, topic: str, payload: bytes) -> bool:
    """Publish once from another device's connection; True if the broker never
    acknowledged it (within 5 s)."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="big")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=5)
        return not info.is_published()
    except (RuntimeError, ValueError):  # paho: the connection went away under it
        return True
    finally:
        client.disconnect()
        client.loop_stop()


async def _refused_by_the_broker(
    tmp_path: Path, cloud_server: NatsServer, js: JetStreamContext, port: int, size: int
) -> None:
    """nats-server's MQTT listener refuses a message over its max_payload (1 MiB) itself:
    the agent never sees it. What must hold is that a neighbour's readings around it
    still arrive within 10 s, and nothing reaches the dead letters."""
    topic = "sensors/s1/d1"
    cfg = make_config(tmp_path, cloud_server, port)
    async with running(Agent(cfg)) as agent:
        await asyncio.to_thread(publish_qos1, port, topic, json_payloads("d1", range(1, 6)))
        assert await asyncio.to_thread(_publish_refused, port, "sensors/s1/big", b"x" * size)
        await asyncio.to_thread(publish_qos1, port, topic, json_payloads("d1", range(6, 11)))
        seqs = await eventually(lambda: stream_seqs(js), lambda s: len(s) >= 10, timeout=10)
        assert agent.snapshot().accounting["reconciles"]
    assert seqs == list(range(1, 11))
    info = await js.stream_info(subjects.DLQ_STREAM)
    assert info.state.messages == 0

"""What the brokers really do when a QoS 1 message is not acknowledged: the facts that
redelivery recognition (edge/dedupe.py) rests on, measured on both brokers the agent
meets. MQTT 3.1.1 §4.4: on session resume the unacknowledged PUBLISH packets are sent
again; §3.3.1.1: with DUP=1; §2.3.1: with the same packet identifier (reused only after
the PUBACK)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.servers import NatsServer
from tests.conftest import mosquitto_binary
from tests.helpers import publish_qos1
from tests.mosquitto import Mosquitto

Seen = tuple[int, bool, bytes]  # packet id, DUP, payload


class Subscriber:
    """A persistent-session QoS 1 subscriber that acknowledges only the first `ack` messages."""

    def __init__(self, port: int, ack: int) -> None:
        self.seen: list[Seen] = []
        self.session_present: bool | None = None
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="redelivery-probe",
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.ack = ack
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(
        self, c: mqtt.Client, _u: object, flags: mqtt.ConnectFlags, *_a: object
    ) -> None:
        self.session_present = flags.session_present
        c.subscribe("t/#", 1)

    def _on_message(self, c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        self.seen.append((m.mid, bool(m.dup), bytes(m.payload)))
        if len(self.seen) <= self.ack:
            c.ack(m.mid, m.qos)

    def wait(self, n: int, timeout: float = 20.0) -> list[Seen]:
        deadline = time.monotonic() + timeout
        while len(self.seen) < n:
            assert time.monotonic() < deadline, self.seen
            time.sleep(0.02)  # polling a paho thread, bounded by the deadline
        return self.seen

    def drop(self) -> None:
        """The connection dies without a DISCONNECT, as when the agent is killed."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


def _scenario(port: int) -> tuple[list[Seen], list[Seen]]:
    first = Subscriber(port, ack=0)
    assert first.subscribed.wait(20)
    first.drop()
    publish_qos1(port, "t/x", [b"m%d" % i for i in range(5)])
    got = Subscriber(port, ack=2)
    before = list(got.wait(5))
    got.drop()
    again = Subscriber(port, ack=100)
    after = list(again.wait(3))
    again.drop()
    return before, after


@pytest.fixture
def mosquitto_port(tmp_path: Path) -> Iterator[int]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto not installed")
    import asyncio

    mosq = Mosquitto(tmp_path / "mosquitto")
    asyncio.run(mosq.start())
    try:
        yield mosq.port
    finally:
        asyncio.run(mosq.stop())


def test_mosquitto_resends_with_dup_and_the_same_packet_ids(mosquitto_port: int) -> None:
    before, after = _scenario(mosquitto_port)
    assert [(pid, dup) for pid, dup, _ in before] == [(i, False) for i in range(1, 6)]
    # the three unacknowledged, in order, DUP=1, same ids and bytes
    assert after[:3] == [(pid, True, p) for pid, _, p in before[2:]]


async def test_nats_server_resends_with_dup_and_the_same_packet_ids(tmp_path: Path) -> None:
    """It resends after its `ack_wait` (here 2 s), newer messages first; and also, not
    tested here (see tests/chaos/test_chaos.py), after a restart of the server itself:
    DUP=1 then, but with packet ids given out afresh, which proves nothing."""
    import asyncio

    async with NatsServer(tmp_path / "edge", mqtt=True, mqtt_options='ack_wait: "2s"') as srv:
        before, after = await asyncio.to_thread(_scenario, srv.mqtt_port)
    assert [(pid, dup) for pid, dup, _ in before] == [(i, False) for i in range(1, 6)]
    assert sorted(after[:3]) == [(pid, True, p) for pid, _, p in before[2:]]

"""The MQTT source's buffered reads and bulk acknowledgements (edge/sources/mqtt.py,
`_Client`), against a real Mosquitto: a burst larger than one read turn arrives whole and
in order, and only the messages acknowledged are gone from the session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.sources import SourceMessage
from edge.sources.mqtt import _READ_BURST, MqttSource, _Client
from gateway.config import MqttSourceSettings
from tests.conftest import mosquitto_binary
from tests.helpers import eventually, publish_qos1
from tests.mosquitto import Mosquitto

BURST = 3 * _READ_BURST  # more than one read turn takes: the rest comes from the buffer


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    mosq = Mosquitto(tmp_path / "mosquitto", max_inflight=2 * BURST)  # the whole burst in flight
    await mosq.start()
    try:
        yield mosq
    finally:
        await mosq.stop()


async def _started(port: int, got: list[SourceMessage]) -> MqttSource:
    settings = MqttSourceSettings(url=f"mqtt://127.0.0.1:{port}", topics=["t/#"])
    src = MqttSource("mqtt0", settings, "acks-test", got.append)
    await src.start()
    await asyncio.wait_for(src.ready.wait(), 20)
    return src


async def _round_trip(src: MqttSource) -> None:
    """A SUBACK on the same connection: the broker has handled every packet before it
    (Mosquitto drops what it has not read yet of a connection that closes). The acks go
    out at the loop's next turn: the SUBSCRIBE is queued after them."""

    async def acks_waiting() -> int:
        return len(src._acks)

    await eventually(acks_waiting, lambda n: n == 0)
    client = src._client
    assert client is not None
    done = asyncio.Event()
    client.on_subscribe = lambda *_a: done.set()
    client.subscribe("sync/none", 1)
    await asyncio.wait_for(done.wait(), 20)


def _published(got: list[SourceMessage]) -> list[SourceMessage]:
    return [m for m in got if not m.session_reset]


async def _count(got: list[SourceMessage]) -> int:
    return len(_published(got))


async def test_a_burst_arrives_in_order_and_only_acked_messages_leave_the_session(
    mosquitto: Mosquitto,
) -> None:
    got: list[SourceMessage] = []
    src = await _started(mosquitto.port, got)
    # about 330 KB: several 64 KiB reads, so packets cut by a read's end (paho's path) too
    payloads = [b"m%d:" % i + b"x" * 200 for i in range(BURST)]
    try:
        await asyncio.to_thread(publish_qos1, mosquitto.port, "t/x", payloads)
        await eventually(lambda: _count(got), lambda n: n >= BURST)
        first = _published(got)
        assert [m.payload for m in first] == payloads  # none acked yet: all in flight
        keep = BURST - 100
        for m in first[:keep]:  # as a commit does: in arrival order
            assert m.ack is not None
            m.ack()
        await _round_trip(src)
    finally:
        await src.stop()  # sends the acks given, then disconnects

    again: list[SourceMessage] = []
    src = await _started(mosquitto.port, again)
    try:
        # the broker resends the unacknowledged before anything new: wait for the marker
        await asyncio.to_thread(publish_qos1, mosquitto.port, "t/x", [b"marker"], "pub-2")
        await eventually(
            lambda: _count(again), lambda n: n > 0 and _published(again)[-1].payload == b"marker"
        )
    finally:
        await src.stop()
    resent = _published(again)[:-1]
    assert [m.payload for m in resent] == payloads[keep:]
    assert all(m.dup for m in resent)


# -- the PUBLISH decoder on its own: bytes in the buffer, no connection --------------------
def _publish(topic: bytes, payload: bytes, mid: int = 0, qos: int = 1, dup: bool = False) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    body += payload
    length, n = b"", len(body)
    while True:  # MQTT's variable-length remaining length
        byte, n = n & 127, n >> 7
        length += bytes([byte | (128 if n else 0)])
        if not n:
            break
    return bytes([0x30 | qos << 1 | (0x08 if dup else 0)]) + length + body


def _client(buffer: bytes) -> tuple[_Client, list[tuple[str, bytes, int, int, bool]]]:
    taken: list[tuple[str, bytes, int, int, bool]] = []
    client = _Client(lambda *a: taken.append(a), callback_api_version=CallbackAPIVersion.VERSION2)
    client._rbuf = buffer
    return client, taken


def test_whole_publishes_are_taken_in_order_qos0_and_qos1() -> None:
    big = b"x" * 300  # a two-byte remaining length
    client, taken = _client(
        _publish(b"t/a", b"one", 7)
        + _publish(b"t/b", big, qos=0)
        + _publish(b"t/c", b"", 9, dup=True)
    )
    while client._take_publish():
        pass
    assert taken == [
        ("t/a", b"one", 7, 1, False),
        ("t/b", big, 0, 0, False),
        ("t/c", b"", 9, 1, True),
    ]
    assert not client.buffered


@pytest.mark.parametrize(
    "packet",
    [
        _publish(b"t/a", b"payload", 3)[:-2],  # cut by the buffer's end: paho reads the rest
        _publish(b"t/a", b"payload", 3)[:2],  # not even the topic's length yet
        _publish(b"t/a", b"p", 3, qos=2),  # QoS 2: paho keeps its state
        _publish(b"", b"p", 3),  # an empty topic: malformed, paho's to refuse
        _publish(b"t/\xff", b"p", 3),  # not UTF-8
        bytes([0x20, 0x02, 0x00, 0x00]),  # a CONNACK
    ],
)
def test_anything_else_is_left_to_paho_untouched(packet: bytes) -> None:
    client, taken = _client(packet)
    assert not client._take_publish()
    assert taken == [] and client._rpos == 0

"""MQTT source on paho-mqtt, with manual acknowledgement.

aiomqtt would be the natural asyncio choice, but it acknowledges QoS 1 messages on
receipt; the guarantee chain needs the PUBACK held back until the reading is durable,
which paho's `manual_ack=True` gives. paho's network thread hands messages to the event
loop with `call_soon_threadsafe`; acks are sent from the loop, in arrival order as MQTT
3.1.1 requires (they are collected in that order by the batcher).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.sources import Deliver, SourceMessage
from gateway.config import MqttSourceSettings

log = logging.getLogger(__name__)


def broker_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp", ""):
        raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} in {url!r}")
    return parts.hostname or "127.0.0.1", parts.port or 1883


class MqttSource:
    def __init__(
        self,
        name: str,
        settings: MqttSourceSettings,
        client_id: str,
        deliver: Deliver,
    ) -> None:
        self.name = name
        self.settings = settings
        self.client_id = client_id
        self._deliver = deliver
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: deque[SourceMessage] = deque()
        self._drain_pending = False
        self.ready = asyncio.Event()  # set once subscribed
        self.connected = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,  # persistent session: the broker keeps what we miss
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if self.settings.username:
            client.username_pw_set(self.settings.username, self.settings.password)
        client.max_inflight_messages_set(self.settings.max_inflight)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        host, port = broker_address(self.settings.url)
        client.connect_async(host, port, keepalive=30)
        client.loop_start()
        self._client = client

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    # paho callbacks: they run on paho's network thread.
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("%s: MQTT connect refused: %s", self.name, rc)
            return
        self.connected = True
        client.subscribe([(t, 1) for t in self.settings.topics])

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected = False
        log.info("%s: MQTT disconnected (%s); paho reconnects with backoff", self.name, rc)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        assert self._loop is not None
        if any(c.is_failure for c in codes):
            log.error("%s: subscription refused: %s", self.name, codes)
            return
        self._loop.call_soon_threadsafe(self.ready.set)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        assert self._loop is not None
        mid, qos = msg.mid, msg.qos
        ack: Callable[[], None] | None = None
        if qos > 0:

            def ack() -> None:
                client.ack(mid, qos)

        self._inbox.append(
            SourceMessage(self.name, msg.topic, bytes(msg.payload), ack, time.time_ns())
        )
        if not self._drain_pending:
            self._drain_pending = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """On the event loop: hand over everything paho's thread has received so far."""
        self._drain_pending = False  # first: a message appended after this schedules again
        inbox, deliver = self._inbox, self._deliver
        while inbox:
            deliver(inbox.popleft())

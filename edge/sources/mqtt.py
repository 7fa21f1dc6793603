"""MQTT source on paho-mqtt, with manual acknowledgement, driven by the asyncio loop.

aiomqtt would be the natural asyncio choice, but it acknowledges QoS 1 messages on
receipt; the guarantee chain needs the PUBACK held back until the reading is durable,
which paho's `manual_ack=True` gives. Acks are sent in arrival order, as MQTT 3.1.1
requires (the batcher collects them in that order).

paho runs on the event loop itself, through its documented external-loop hooks
(`on_socket_open/close`, `on_socket_register/unregister_write`, `loop_read/write/misc`),
not on its own thread: a message costs no thread hand-over, no GIL contention with the
agent, and no wake-up byte per acknowledgement (measured: that made the agent 1.6x
faster than paho's `loop_start()` thread). paho's `connect()` itself is a blocking TCP
connect, though, which would freeze every source and the uplink for up to its 5 s timeout
whenever a broker is unreachable; so the address is resolved and a TCP connection tried
first without blocking, and paho connects (one round trip) only to a broker that answered.
On the hot path paho's per-packet machinery is bypassed (`_Client`): one read serves many
packets, a whole PUBLISH is decoded here, and a commit's PUBACKs go out as one write.

The session is persistent (clean session off, fixed client id), so readings published
while the agent is away wait in the broker. Reconnection is ours: a delay that grows,
is capped and randomised, reset once connected.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge.sources import (
    Deliver,
    SourceMessage,
    SourceStatus,
    cancel_and_wait,
    mqtt_tls,
    task_status,
)
from gateway.config import MqttSourceSettings
from gateway.retry import Backoff

log = logging.getLogger(__name__)

_READ_BURST = 512  # packets read per readable event before yielding to other tasks
_READ_CHUNK = 1 << 16  # bytes taken from the socket per recv
_PUBACK = 0x40
_KEEPALIVE_S = 30
_CONNECT_TIMEOUT_S = 5.0  # as paho's own


def broker_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", ""):
        raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} in {url!r}")
    default = mqtt_tls.DEFAULT_TLS_PORT if parts.scheme == "mqtts" else 1883
    return parts.hostname or "127.0.0.1", parts.port or default


OnPublish = Callable[[str, bytes, int, int, bool], None]  # topic, payload, mid, qos, dup


class _Client(mqtt.Client):
    """paho's client, reading through a buffer, decoding PUBLISH itself and acknowledging
    in bulk (measured on `bench.frugality`, 1,000 messages/s: paho's own path cost more
    CPU per message than everything else the agent does with it).

    paho reads one packet with three recv calls or more (its command byte, each byte of
    its length, the rest), wraps it in several objects and locks, and writes one send per
    packet, so an agent acknowledging 1,000 messages per commit paid 1,000 sends. Here one
    recv takes what is there (up to 64 KiB); a whole QoS 0/1 PUBLISH found in it goes to
    `on_publish` directly, anything else (CONNACK, SUBACK, a packet cut by the end of the
    buffer, QoS 2, a malformed one) to paho, which reads it from the same buffer; and
    `ack_many` writes a commit's PUBACKs as one packet: the same bytes on the wire, in the
    same order. paho internals used (`_packet_read`, `_sock_recv`, `_in_packet`,
    `_packet_queue`, `_last_bytes_received`) are those of the version pinned in
    requirements.lock; tests/edge/test_mqtt_source_acks.py covers the paths."""

    def __init__(self, on_publish: OnPublish, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._take = on_publish  # (paho's own `_on_publish` is its on_publish callback)
        self._rbuf = b""
        self._rpos = 0
        self._error: OSError | None = None

    def reset_buffer(self) -> None:
        """A new socket: nothing read from an old one may be taken for its bytes."""
        self._rbuf, self._rpos, self._error = b"", 0, None

    @property
    def buffered(self) -> bool:
        """Bytes read from the socket that are not handled yet (epoll knows nothing of
        them: whoever reads must drain them)."""
        return self._rpos < len(self._rbuf)

    def _fill(self) -> None:
        try:
            data = super()._sock_recv(_READ_CHUNK)
        except BlockingIOError:
            return  # paho's own recv meets it again and says so
        except OSError as exc:  # a TLS alert, a reset: paho's next recv raises it, to report
            self._error = exc
            return
        self._rbuf, self._rpos = data, 0  # b"" at EOF: paho's recv sees it too

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(_READ_CHUNK)  # BlockingIOError: nothing there yet
            if not data:
                return data  # EOF: paho reports the connection lost
            self._rbuf, self._rpos = data, 0
        out = self._rbuf[self._rpos : self._rpos + bufsize]
        self._rpos += len(out)
        return out

    def _packet_read(self) -> MQTTErrorCode:
        if self._in_packet["command"] == 0:  # between packets
            if self._rpos >= len(self._rbuf):
                self._fill()
            if self._take_publish():
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._packet_read()

    def _take_publish(self) -> bool:
        """Decode and hand over a whole QoS 0/1 PUBLISH (MQTT 3.1.1) at the head of the
        buffer; False, having consumed nothing, for anything paho must read itself."""
        buf, pos = self._rbuf, self._rpos
        end = len(buf)
        if pos >= end:
            return False
        header = buf[pos]
        qos = (header >> 1) & 3
        if header & 0xF0 != 0x30 or qos > 1:
            return False
        length, mult, i = 0, 1, pos + 1
        while True:  # the remaining length: at most 4 bytes, 7 bits each
            if i >= end or i > pos + 4:
                return False
            byte = buf[i]
            i += 1
            length += (byte & 127) * mult
            mult <<= 7
            if not byte & 128:
                break
        stop = i + length
        if stop > end or i + 2 > stop:
            return False  # cut short by the buffer's end (or malformed): paho's to read
        topic_end = i + 2 + (buf[i] << 8 | buf[i + 1])
        start = topic_end + 2 if qos else topic_end
        if topic_end == i + 2 or start > stop:
            return False  # malformed (an empty topic, lengths past the end): paho's to judge
        try:
            topic = buf[i + 2 : topic_end].decode()
        except UnicodeDecodeError:
            return False
        mid = buf[topic_end] << 8 | buf[topic_end + 1] if qos else 0
        self._rpos = stop
        self._last_bytes_received = time.monotonic()  # what paho's keepalive goes by
        self._take(topic, buf[start:stop], mid, qos, bool(header & 0x08))
        return True

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK each of `mids` (QoS 1, manual ack), in order, in one write."""
        packet = b"".join([struct.pack("!BBH", _PUBACK, 2, mid) for mid in mids])
        self._packet_queue(_PUBACK, packet, 0, 1)


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
        self._client: _Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.ready = asyncio.Event()  # set once subscribed
        self.connected = False
        self.last_error = ""  # why not connected, for `status` ("" once subscribed)
        self._tls: ssl.SSLContext | None = None
        # Connections so far. An ack is sent only on the connection its message came by:
        # a broker restarted meanwhile gives packet ids out afresh (measured: nats-server),
        # so an old id would acknowledge another message, perhaps one not durable yet.
        # Over a new connection the broker resends what is unacknowledged anyway.
        self._connection = 0
        # Acks the agent gave since the last write, with their connection: sent together
        # at the next turn of the loop (a commit acknowledges hundreds at once).
        self._acks: list[tuple[int, int]] = []

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = self._make_client()
        self._task = asyncio.create_task(self._supervise(), name=f"mqtt-{self.name}")

    def _make_client(self) -> _Client:
        client = _Client(
            self._on_publish,
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,  # persistent session: the broker keeps what we miss
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        client.max_inflight_messages_set(self.settings.max_inflight)  # our own publishes
        if self.settings.username:
            client.username_pw_set(self.settings.username, self.settings.password)
        if mqtt_tls.wants_tls(self.settings):
            assert self.settings.tls is not None  # the config refuses mqtts:// without it
            host = broker_address(self.settings.url)[0]
            self._tls = mqtt_tls.client_context(self.settings.tls, host)
            client.tls_set_context(self._tls)
            client.enable_logger(mqtt_tls.paho_logger(self.name, self._failed))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    def status(self) -> SourceStatus:
        dead = task_status(self._task)
        if dead is not None:
            return dead
        if not self.connected:
            return SourceStatus(False, self.last_error)
        return SourceStatus(True)

    async def stop(self) -> None:
        self._send_acks()  # what is durable is acknowledged before the DISCONNECT
        task, self._task = self._task, None
        await cancel_and_wait(task)
        client, self._client = self._client, None
        if client is not None and client.socket() is not None:
            client.disconnect()
            client.loop_write()  # send the DISCONNECT now; paho then closes the socket

    # -- connection supervision ------------------------------------------------------------
    async def _supervise(self) -> None:
        """Connect, and reconnect with backoff whenever the connection is lost."""
        assert self._client is not None
        host, port = broker_address(self.settings.url)
        backoff = Backoff(0.2, 30.0)
        while True:
            self._lost.clear()
            try:
                address = await _answering_address(host, port, self._tls)
                self._client.connect(address, port, keepalive=_KEEPALIVE_S)
            except (OSError, TimeoutError, mqtt.WebsocketConnectionError) as exc:
                delay = backoff.next()
                self._failed(f"cannot connect to {host}:{port}: {mqtt_tls.describe(exc)}", delay)
                await asyncio.sleep(delay)
                continue
            async with asyncio.TaskGroup() as tg:
                misc = tg.create_task(self._misc(), name=f"mqtt-{self.name}-keepalive")
                await self._lost.wait()
                misc.cancel()
            if self.connected_once:
                backoff.reset()
            await asyncio.sleep(backoff.next())

    @property
    def connected_once(self) -> bool:
        return self.ready.is_set()

    def _failed(self, error: str, retry_s: float | None = None) -> None:
        """Record why connecting failed, for `status`; the agent logs the change of state
        once (edge/health.py), so each retry is only a debug line."""
        error = mqtt_tls.explain(error)
        then = f"; retrying (next in {retry_s:.1f}s)" if retry_s is not None else ""
        log.debug("%s: %s%s", self.name, error, then)
        self.last_error = error

    async def _misc(self) -> None:
        """Keepalive pings and their timeouts (paho's `loop_misc`), once a second."""
        assert self._client is not None
        while True:
            if self._client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # the socket is gone; `_on_socket_close` has said so
            await asyncio.sleep(1.0)

    # -- paho's external-loop hooks (all run on the event loop) ----------------------------
    def _on_socket_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None and isinstance(client, _Client)
        client.reset_buffer()
        self._loop.add_reader(sock, self._on_readable, client, sock)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._lost.set()

    def _on_register_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _on_readable(self, client: _Client, sock: socket.socket) -> None:
        """Read every packet that is there (paho's `loop_read` takes one per call): until
        the buffer is drained; what the socket still holds wakes the loop again."""
        for _ in range(_READ_BURST):
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if not client.buffered and not _tls_pending(sock):
                return
        assert self._loop is not None  # a long burst: the rest after the other tasks
        self._loop.call_soon(self._on_readable, client, sock)

    # -- MQTT events -----------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._failed(f"the broker refused the connection: {rc}")
            return
        self.connected = True
        self._connection += 1
        if not flags.session_present:  # nothing sent before can be resent: say so, in order
            self._deliver(SourceMessage(self.name, "", b"", session_reset=True))
        client.subscribe([(t, 1) for t in self.settings.topics])

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected = False
        if not self.last_error:  # keep a more specific reason (a TLS refusal) if one came first
            self.last_error = f"disconnected ({rc})"
        log.debug("%s: MQTT disconnected (%s)", self.name, rc)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        if any(c.is_failure for c in codes):
            self._failed(f"subscription refused: {codes}")
            return
        self.last_error = ""
        self.ready.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """What paho decoded itself (QoS 2; see `_Client`)."""
        self._on_publish(msg.topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.dup))

    def _on_publish(self, topic: str, payload: bytes, mid: int, qos: int, dup: bool) -> None:
        connection = self._connection
        ack: Callable[[], None] | None = None
        if qos == 1:

            def ack() -> None:
                if not self._acks:
                    assert self._loop is not None
                    self._loop.call_soon(self._send_acks)
                self._acks.append((connection, mid))

        elif qos == 2:

            def ack() -> None:
                client = self._client
                if client is not None and connection == self._connection and self.connected:
                    client.ack(mid, qos)

        self._deliver(
            SourceMessage(
                self.name,
                topic,
                payload,
                ack,
                time.time_ns(),
                packet_id=mid if qos > 0 else 0,
                dup=dup,
                connection=connection,
                reply=self.publish,
            )
        )

    def _send_acks(self) -> None:
        """The acks given so far, in the order given, as one write; an ack is sent only on
        the connection its message came by (see `_connection`)."""
        acks, self._acks = self._acks, []
        client = self._client
        if client is None or not self.connected:
            return
        mids = [mid for connection, mid in acks if connection == self._connection]
        if mids:
            client.ack_many(mids)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish QoS 0 on this connection (a decoder's answer to a device: Sparkplug B's
        rebirth request, which a node that misses it is asked again for). Dropped, and
        logged, while disconnected: the request is repeated on the node's next message."""
        client = self._client
        if client is None or not self.connected:
            log.info("%s: not connected; not sent to %s", self.name, topic)
            return
        client.publish(topic, payload, qos=0)


async def _answering_address(host: str, port: int, tls: ssl.SSLContext | None = None) -> str:
    """The first address of `host` that accepts a TCP connection (with `tls`: completes a
    TLS handshake, since paho's own handshake blocks) within the timeout, found without
    blocking the loop (the probe connection is closed at once)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: Exception = OSError(f"no address for {host}")
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                # A bare Protocol: a stream's would warn on the broker's EOF under TLS.
                transport, _ = await loop.create_connection(
                    asyncio.Protocol,
                    address,
                    port,
                    ssl=tls,
                    server_hostname=mqtt_tls.server_name(tls, host),
                )
        except (OSError, TimeoutError) as exc:
            error = exc
            continue
        transport.close()
        return address
    raise error


def _tls_pending(sock: socket.socket) -> bool:
    """Bytes TLS has decrypted but not handed out yet: epoll does not see them either."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

"""A small MQTT 3.1.1 publisher built for thousands of simulated devices in one process.

A device publishes and waits for PUBACKs; it never subscribes. That needs five packet
types, so this is a few lines on asyncio's Protocol (no task, no thread per connection)
rather than one paho client per device. `MqttLink` is one client id: it connects,
reconnects with a growing, capped, randomised delay, and resends unacknowledged QoS 1
messages with the DUP flag after a reconnect, in their original order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 12, 13, 14


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def connect_packet(client_id: str, keepalive: int, clean: bool = True) -> bytes:
    body = _string(b"MQTT") + bytes([4, 0x02 if clean else 0]) + struct.pack("!H", keepalive)
    body += _string(client_id.encode())
    return bytes([CONNECT << 4]) + _remaining_length(len(body)) + body


def publish_packet(
    topic: bytes, payload: bytes, qos: int, pid: int = 0, dup: bool = False
) -> bytes:
    flags = (0x08 if dup else 0) | (qos << 1)
    head = _string(topic) + (struct.pack("!H", pid) if qos else b"")
    size = _remaining_length(len(head) + len(payload))
    return bytes([PUBLISH << 4 | flags]) + size + head + payload


def parse_packets(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take every complete packet off the front of `buf`: (type, body)."""
    out: list[tuple[int, bytes]] = []
    while len(buf) >= 2:
        n, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return out
            byte = buf[i]
            n += (byte & 0x7F) * mult
            mult *= 128
            i += 1
            if not byte & 0x80:
                break
        if len(buf) < i + n:
            return out
        out.append((buf[0] >> 4, bytes(buf[i : i + n])))
        del buf[: i + n]
    return out


class MqttProtocolError(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _Connection(asyncio.Protocol):
    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(connect_packet(self.link.client_id, self.link.keepalive))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for ptype, body in parse_packets(self.buf):
            if ptype == CONNACK and not self.connack.done():
                self.connack.set_result(body[1] if len(body) >= 2 else 255)
            elif ptype == PUBACK and len(body) >= 2:
                self.link.acked(struct.unpack("!H", body[:2])[0])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(str(exc) if exc else "closed by broker"))
        self.link.lost(self)


class MqttLink:
    """One MQTT client id. `on_ack(token)` is called once per acknowledged message (QoS 1),
    or as soon as it is written (QoS 0)."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        qos: int,
        on_ack: Callable[[Any], None],
        max_inflight: int = 16,
        keepalive: int = 60,
        tls: ssl.SSLContext | None = None,  # MQTT over TLS (the broker's name: `host`)
    ) -> None:
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {qos}")
        self.host, self.port, self.client_id, self.qos = host, port, client_id, qos
        self.on_ack, self.max_inflight, self.keepalive = on_ack, max_inflight, keepalive
        self.tls = tls
        self.inflight: dict[int, tuple[bytes, bytes, Any]] = {}
        self.connected = False
        self.connects = 0
        self.failures = 0
        self._conn: _Connection | None = None
        self._pid = 0
        self._closed = asyncio.Event()
        self._lost = asyncio.Event()

    def can_send(self) -> bool:
        if not self.connected or self._conn is None or self._conn.transport is None:
            return False
        if self.qos:
            return len(self.inflight) < self.max_inflight
        return self._conn.transport.get_write_buffer_size() < 1 << 20

    def publish(self, topic: bytes, payload: bytes, token: Any) -> None:
        """Send now; the caller checked `can_send()`."""
        assert self._conn is not None and self._conn.transport is not None
        if not self.qos:
            self._conn.transport.write(publish_packet(topic, payload, 0))
            self.on_ack(token)
            return
        pid = self._next_pid()
        self.inflight[pid] = (topic, payload, token)
        self._conn.transport.write(publish_packet(topic, payload, 1, pid))

    def acked(self, pid: int) -> None:
        entry = self.inflight.pop(pid, None)
        if entry is not None:
            self.on_ack(entry[2])

    def drop_connection(self) -> None:
        """Fault injection: cut the TCP connection without DISCONNECT, as a broker restart
        or a NAT timeout does."""
        if self._conn is not None and self._conn.transport is not None:
            self.connected = False  # abort() reports the loss only on the next loop turn
            self._conn.transport.abort()

    def lost(self, conn: _Connection) -> None:
        if conn is self._conn:
            self.connected = False
            self._lost.set()

    async def run(self) -> None:
        """Connect and stay connected until `close()`."""
        delay = 0.1
        loop = asyncio.get_running_loop()
        while not self._closed.is_set():
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Connection(self), self.host, self.port, ssl=self.tls
                    ),
                    10,
                )
                self._conn = conn
                rc = await asyncio.wait_for(conn.connack, 10)
                if rc != 0:
                    raise MqttProtocolError(f"CONNACK return code {rc}")
            except (OSError, TimeoutError, MqttProtocolError) as exc:
                self.failures += 1
                log.debug("%s: connect failed: %s", self.client_id, exc)
                await self._pause(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            self.connects += 1
            self._lost.clear()
            self._resend()
            self.connected = True
            await self._stay_connected()
        self._disconnect()

    async def _stay_connected(self) -> None:
        closed = asyncio.ensure_future(self._closed.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            while not (closed.done() or lost.done()):
                await asyncio.wait(
                    {closed, lost}, timeout=self.keepalive / 2, return_when=asyncio.FIRST_COMPLETED
                )
                if self.connected and self._conn and self._conn.transport:
                    self._conn.transport.write(bytes([PINGREQ << 4, 0]))
        finally:
            closed.cancel()
            lost.cancel()
        if lost.done() and not self._closed.is_set():
            self.failures += 1
            await self._pause(random.uniform(0.05, 0.3))

    def _resend(self) -> None:
        assert self._conn is not None and self._conn.transport is not None
        for pid, (topic, payload, _) in self.inflight.items():
            self._conn.transport.write(publish_packet(topic, payload, 1, pid, dup=True))

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._closed.wait(), seconds * random.uniform(0.5, 1.0))
        except TimeoutError:
            pass

    def _next_pid(self) -> int:
        while True:
            self._pid = self._pid % 65535 + 1
            if self._pid not in self.inflight:
                return self._pid

    def _disconnect(self) -> None:
        self.connected = False
        if self._conn is not None and self._conn.transport is not None:
            if not self._conn.transport.is_closing():
                self._conn.transport.write(bytes([DISCONNECT << 4, 0]))
            self._conn.transport.close()

    def close(self) -> None:
        self._closed.set()

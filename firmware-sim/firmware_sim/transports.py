"""How device messages leave the process: MQTT (one client per device, or multiplexed
through one connection as a gateway device does) or serial (one pseudo-terminal per
device, paced at its baud rate).

Every transport calls `on_delivered(message)` once a message is delivered: on the
broker's PUBACK (QoS 1), when written to the socket (QoS 0), or when its last byte is on
the serial line. The engine records the ground truth there, never earlier.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import termios
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from firmware_sim.firmware import Message
from firmware_sim.mqtt import MqttLink

TransportName = Literal["mqtt", "mqtt-mux", "serial"]
Delivered = Callable[[Message], None]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a transport needs to know about one device."""

    name: str
    site: str
    protocol: str
    baud: int


class Transport(Protocol):
    async def run(self) -> None:
        """Connect and keep going until `close()`."""

    def close(self) -> None: ...
    def can_send(self, dev: int) -> bool: ...
    def send(self, msg: Message) -> None: ...
    def idle(self, dev: int) -> bool:
        """Nothing of this device's is in flight (a reboot may wipe its memory)."""

    def cut(self, dev: int) -> bool:
        """Fault injection: drop the device's broker connection; False if not applicable."""

    def connected(self) -> int: ...
    def reconnects(self) -> int: ...


def topic(ep: Endpoint, prefix: str) -> bytes:
    return f"{prefix}/{ep.protocol}/{ep.site}/{ep.name}".encode()


class MqttPerDevice:
    """One MQTT client (and TCP connection) per device, like real devices."""

    def __init__(
        self, host: str, port: int, endpoints: list[Endpoint], qos: int, on_delivered: Delivered,
        prefix: str = "sensors", tls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self.topics = [topic(ep, prefix) for ep in endpoints]
        self.on_delivered = on_delivered
        self.links = [
            MqttLink(
                host, port, f"sim-{ep.site}-{ep.name}", qos, self._acked, max_inflight=8, tls=tls
            )
            for ep in endpoints
        ]

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for link in self.links:
                tg.create_task(link.run(), name=f"mqtt-{link.client_id}")

    def close(self) -> None:
        for link in self.links:
            link.close()

    def _acked(self, msg: Message) -> None:
        self.on_delivered(msg)

    def can_send(self, dev: int) -> bool:
        return self.links[dev].can_send()

    def send(self, msg: Message) -> None:
        link, topic = self.links[msg.device], msg.topic or self.topics[msg.device]
        link.publish(topic, msg.payload, msg)
        if msg.send_twice and link.can_send():
            link.publish(topic, msg.payload, msg)

    def idle(self, dev: int) -> bool:
        return not self.links[dev].inflight

    def cut(self, dev: int) -> bool:
        self.links[dev].drop_connection()
        return True

    def connected(self) -> int:
        return sum(link.connected for link in self.links)

    def reconnects(self) -> int:
        return sum(max(0, link.connects - 1) for link in self.links)


class MqttMux:
    """Every device's messages through one MQTT connection (a gateway device)."""

    def __init__(
        self, host: str, port: int, endpoints: list[Endpoint], qos: int, on_delivered: Delivered,
        prefix: str = "sensors", client_id: str = "sim-gateway", max_inflight: int = 1000,
        tls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self.topics = [topic(ep, prefix) for ep in endpoints]
        self.on_delivered = on_delivered
        self.link = MqttLink(
            host, port, client_id, qos, self._acked, max_inflight=max_inflight, tls=tls
        )
        self.pending = [0] * len(endpoints)
        self.n = len(endpoints)

    async def run(self) -> None:
        await self.link.run()

    def close(self) -> None:
        self.link.close()

    def _acked(self, msg: Message) -> None:
        self.pending[msg.device] -= 1
        self.on_delivered(msg)

    def can_send(self, dev: int) -> bool:
        return self.link.can_send()

    def send(self, msg: Message) -> None:
        self.pending[msg.device] += 1
        topic = msg.topic or self.topics[msg.device]
        self.link.publish(topic, msg.payload, msg)
        if msg.send_twice and self.link.can_send():
            self.pending[msg.device] += 1
            self.link.publish(topic, msg.payload, msg)

    def idle(self, dev: int) -> bool:
        return self.pending[dev] == 0

    def cut(self, dev: int) -> bool:
        self.link.drop_connection()
        return True

    def connected(self) -> int:
        return self.n if self.link.connected else 0

    def reconnects(self) -> int:
        return max(0, self.link.connects - 1)


class SerialPort:
    """One device's UART: a pseudo-terminal pair. The simulator writes the master side;
    `path` (the slave) is what a reader opens with pyserial, like /dev/ttyUSB0."""

    def __init__(self, baud: int) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no CR/LF translation: bytes pass as they are
        attrs = termios.tcgetattr(self.slave)
        speed = getattr(termios, f"B{baud}", termios.B115200)
        attrs[4] = attrs[5] = speed
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.bytes_per_s = baud / 10  # 8N1: ten bit times per byte
        self.out = bytearray()
        self.ends: deque[tuple[int, Message]] = deque()  # (offset in `out` of its end, msg)
        self.budget = 0.0
        self.written = 0

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class SerialPtys:
    """Every device on its own pseudo-terminal, paced at its baud rate."""

    TICK_S = 0.01
    UART_BUFFER = 4096  # bytes a device holds before it must queue messages itself

    def __init__(self, endpoints: list[Endpoint], on_delivered: Delivered) -> None:
        self.endpoints = endpoints
        self.on_delivered = on_delivered
        self.ports: list[SerialPort] = []
        self._closed = asyncio.Event()

    def open(self) -> list[str]:
        """Create the ptys (before `run`) and return their paths, one per device."""
        if not self.ports:
            self.ports = [SerialPort(ep.baud) for ep in self.endpoints]
        return [p.path for p in self.ports]

    async def run(self) -> None:
        self.open()
        last = time.monotonic()
        try:
            while not self._closed.is_set():
                try:
                    await asyncio.wait_for(self._closed.wait(), self.TICK_S)
                except TimeoutError:
                    pass
                now = time.monotonic()
                for port in self.ports:
                    self._pump(port, now - last)
                last = now
        finally:
            for port in self.ports:
                port.close()

    def _pump(self, port: SerialPort, dt: float) -> None:
        # Bytes can't be saved up while the line is idle: a UART sends at its baud or not.
        port.budget = min(port.budget + dt * port.bytes_per_s, port.bytes_per_s * 0.1)
        n = min(len(port.out), int(port.budget))
        if n <= 0:
            return
        try:
            written = os.write(port.master, port.out[:n])
        except BlockingIOError:
            return  # nobody reads and the pty buffer is full
        except OSError:
            return
        del port.out[:written]
        port.budget -= written
        port.written += written
        while port.ends and port.ends[0][0] <= port.written:
            self.on_delivered(port.ends.popleft()[1])

    def close(self) -> None:
        self._closed.set()

    def can_send(self, dev: int) -> bool:
        return bool(self.ports) and len(self.ports[dev].out) < self.UART_BUFFER

    def send(self, msg: Message) -> None:
        port = self.ports[msg.device]
        port.out += msg.payload * (2 if msg.send_twice else 1)
        port.ends.append((port.written + len(port.out), msg))

    def idle(self, dev: int) -> bool:
        return not self.ports or not self.ports[dev].out

    def cut(self, dev: int) -> bool:
        return False

    def connected(self) -> int:
        return len(self.ports)

    def reconnects(self) -> int:
        return 0

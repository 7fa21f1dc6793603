"""A fleet of virtual devices: the engine (firmware of every device) plus a transport.

fleet = Fleet(FleetSettings(host, port, devices=100), load_catalog())
await fleet.run(stop)          # until stop is set; then a grace period to deliver
fleet.truth.save(path)         # what `gateway verify` compares with
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

from devices.catalog import Catalog
from firmware_sim.engine import DeviceSpec, Engine, PackFormat, PackSpec
from firmware_sim.ground_truth import GroundTruth
from firmware_sim.profiles import Profile, get_profile
from firmware_sim.transports import MqttMux, MqttPerDevice, SerialPtys, Transport, TransportName


@dataclass(frozen=True, slots=True)
class FleetSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    devices: int = 10
    site: str = "site1"
    device_type: str = "env_th"
    rate_hz: float | None = None  # default: each device type's rate
    seed: int = 1
    topic_prefix: str = "sensors"
    transport: TransportName = "mqtt"
    qos: int = 1
    profile: str = "none"
    types: tuple[str, ...] = ()  # a mix of types sharing `devices`; default (device_type,)
    start_ns: int | None = None  # the fleet's time zero; default: now
    grace_s: float = 10.0  # after stop: time to deliver what is queued or in flight
    tls: ssl.SSLContext | None = None  # MQTT over TLS (firmware_sim.cli builds it)
    pack_percent: float = 0.0  # share of devices sending packs, spread over `pack_formats`
    pack_readings: int = 100  # readings per pack
    pack_period_s: float = 1.0  # one pack per device every this many seconds
    pack_formats: tuple[PackFormat, ...] = ("json", "senml")

    def mix(self) -> list[DeviceSpec]:
        types = self.types or (self.device_type,)
        each, extra = divmod(self.devices, len(types))
        out: list[DeviceSpec] = []
        for k, t in enumerate(types):
            out += self._split(t, each + (1 if k < extra else 0))
        return [spec for spec in out if spec.count]

    def _split(self, type_name: str, count: int) -> list[DeviceSpec]:
        """`pack_percent` of a type's devices send packs, shared out over `pack_formats`."""
        packs = round(count * self.pack_percent / 100)
        if not packs or not self.pack_formats:
            return [DeviceSpec(type_name, count)]
        each, extra = divmod(packs, len(self.pack_formats))
        return [DeviceSpec(type_name, count - packs)] + [
            DeviceSpec(type_name, each + (1 if k < extra else 0), self._pack(fmt))
            for k, fmt in enumerate(self.pack_formats)
        ]

    def _pack(self, protocol: PackFormat) -> PackSpec:
        return PackSpec(protocol, self.pack_readings, self.pack_period_s)


@dataclass(frozen=True, slots=True)
class FleetStats:
    connected: int
    messages: int
    readings: int
    retries: int


class Fleet:
    def __init__(
        self, settings: FleetSettings, catalog: Catalog, profile: Profile | None = None
    ) -> None:
        if settings.qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {settings.qos}")
        self.settings = settings
        self.engine = Engine(
            catalog,
            settings.mix(),
            profile or get_profile(settings.profile),
            site=settings.site,
            seed=settings.seed,
            rate_hz=settings.rate_hz,
            start_ns=settings.start_ns,
        )
        self.transport = self._transport()

    @property
    def truth(self) -> GroundTruth:
        return self.engine.truth

    @property
    def stats(self) -> FleetStats:
        e = self.engine.stats
        return FleetStats(
            self.transport.connected(), e.messages, e.readings, self.transport.reconnects()
        )

    def device_names(self) -> list[str]:
        return [ep.name for ep in self.engine.endpoints]

    def serial_ports(self) -> list[str]:
        """The pty path of every device (serial transport only), created on first call."""
        if not isinstance(self.transport, SerialPtys):
            raise ValueError("serial_ports() needs transport='serial'")
        return self.transport.open()

    def _transport(self) -> Transport:
        s, eps, cb = self.settings, self.engine.endpoints, self.engine.delivered
        if s.transport == "serial":
            return SerialPtys(eps, cb)
        if s.transport == "mqtt-mux":
            client_id = f"sim-{s.site}-gw"
            return MqttMux(s.host, s.port, eps, s.qos, cb, s.topic_prefix, client_id, tls=s.tls)
        return MqttPerDevice(s.host, s.port, eps, s.qos, cb, s.topic_prefix, tls=s.tls)

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.transport.run(), name="fleet-transport")
            try:
                await self.engine.run(self.transport, stop)
                await self._settle()
            finally:
                self.transport.close()

    async def _settle(self) -> None:
        """Give queued and in-flight messages `grace_s` to be delivered."""
        deadline = time.monotonic() + self.settings.grace_s
        eng = self.engine
        while time.monotonic() < deadline:
            eng._drain_backlog(float("inf"))
            if not eng.backlog and all(self.transport.idle(d) for d in range(eng.devices)):
                return
            await asyncio.sleep(0.05)

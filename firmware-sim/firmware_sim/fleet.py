"""A fleet of virtual devices publishing JSON readings over MQTT QoS 1.

Each device samples every metric of its type at the type's rate, numbers every reading
(`seq`, from 1), publishes one message per sample, and retries the same message until
the broker acknowledges it, as firmware with a small on-device queue does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass

import aiomqtt
import numpy as np
import orjson

from devices.catalog import Catalog, DeviceType
from gateway.ground_truth import GroundTruth

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FleetSettings:
    host: str
    port: int
    devices: int = 10
    site: str = "site1"
    device_type: str = "env_th"
    rate_hz: float | None = None  # default: the device type's rate
    seed: int = 1
    topic_prefix: str = "sensors"


@dataclass(slots=True)
class FleetStats:
    connected: int = 0
    messages: int = 0
    readings: int = 0
    retries: int = 0


class Fleet:
    def __init__(self, settings: FleetSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.dtype: DeviceType = catalog.types[settings.device_type]
        self.truth = GroundTruth.empty()
        self.stats = FleetStats()

    def device_names(self) -> list[str]:
        return [f"dev-{i:05d}" for i in range(self.settings.devices)]

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            for i, name in enumerate(self.device_names()):
                tg.create_task(self._device(i, name, stop), name=f"device-{name}")

    def _sample(self, rng: np.random.Generator, phase: float, t: float) -> list[tuple[str, float]]:
        out = []
        for metric, spec in self.dtype.metrics.items():
            v = spec.mean + spec.amplitude * math.sin(2 * math.pi * t / 86400 + phase)
            v += spec.noise * float(rng.standard_normal())
            out.append((metric, round(min(spec.max, max(spec.min, v)), 3)))
        return out

    async def _device(self, index: int, name: str, stop: asyncio.Event) -> None:
        s = self.settings
        rng = np.random.default_rng([s.seed, index])
        phase = float(rng.uniform(0, 2 * math.pi))
        period = 1.0 / (s.rate_hz or self.dtype.rate_hz)
        topic = f"{s.topic_prefix}/{s.site}/{name}"
        truth = self.truth.device(s.site, name)
        seq = 0
        next_at = time.monotonic() + float(rng.uniform(0, period))
        pending: bytes | None = None
        pending_values: list[tuple[int, float]] = []
        while not stop.is_set():
            try:
                async with aiomqtt.Client(
                    s.host, s.port, identifier=f"sim-{s.site}-{name}", keepalive=30
                ) as client:
                    self.stats.connected += 1
                    try:
                        while not stop.is_set():
                            if pending is None:
                                if not await _sleep_until(next_at, stop):
                                    break
                                next_at += period
                                now_ns = time.time_ns()
                                readings = []
                                for metric, value in self._sample(rng, phase, now_ns / 1e9):
                                    seq += 1
                                    readings.append(
                                        {
                                            "site": s.site,
                                            "device": name,
                                            "metric": metric,
                                            "value": value,
                                            "unit": self.dtype.metrics[metric].unit,
                                            "time": now_ns,
                                            "seq": seq,
                                        }
                                    )
                                    pending_values.append((seq, value))
                                pending = orjson.dumps(readings)
                            await client.publish(topic, pending, qos=1)
                            # Ground truth counts a reading once the broker has acknowledged it.
                            for sq, value in pending_values:
                                truth.record(sq, value)
                            self.stats.messages += 1
                            self.stats.readings += len(pending_values)
                            pending, pending_values = None, []
                    finally:
                        self.stats.connected -= 1
            except aiomqtt.MqttError as exc:
                self.stats.retries += 1
                log.debug("%s: %s; reconnecting", name, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
        if pending is not None:
            log.warning("%s: stopped with one unsent message", name)


async def _sleep_until(at: float, stop: asyncio.Event) -> bool:
    """Sleep until monotonic time `at`; False if `stop` was set first."""
    delay = at - time.monotonic()
    if delay <= 0:
        return not stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        return True
    return False

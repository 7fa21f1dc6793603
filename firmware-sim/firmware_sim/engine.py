"""The fleet engine: one loop that runs every device's firmware on schedule.

Per device and round: apply the round's faults (clock jump, reboot, link drop, broker
disconnect), build its messages (`firmware.DeviceGroup`), and hand them to the transport,
oldest first; while the device's link is down or the transport can't take more, messages
wait in the device's small queue (oldest dropped when full, counted), and go out in a burst
once it can. The ground truth is recorded when the transport reports a message delivered.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal

from devices.catalog import Catalog, DeviceType
from firmware_sim.ecosystems import ECOSYSTEM_PREFIXES, ECOSYSTEM_TYPES, truth_name
from firmware_sim.firmware import DeviceGroup, Message
from firmware_sim.ground_truth import GroundTruth
from firmware_sim.profiles import Profile
from firmware_sim.transports import Endpoint, Transport


@dataclass(slots=True)
class EngineStats:
    messages: int = 0  # delivered messages (a duplicated send counts once)
    readings: int = 0  # valid readings delivered
    invalid: int = 0  # deliberately invalid readings delivered
    faults: Counter[str] = field(default_factory=Counter)
    queue_dropped: int = 0  # readings dropped from a full on-device queue
    reboot_lost: int = 0  # readings lost with a device's RAM on reboot
    cut_failed: int = 0  # broker disconnects asked of a transport that has none
    max_lag_s: float = 0.0  # worst lateness of a device's send against its schedule
    late: int = 0  # sends more than one period late
    sends: int = 0


PackFormat = Literal["json", "senml"]


@dataclass(frozen=True, slots=True)
class PackSpec:
    """Devices that send packs: `readings` readings per message (a JSON array or a SenML
    pack), one pack every `period_s`, as a gateway or a buffering sensor hub does."""

    protocol: PackFormat
    readings: int = 100
    period_s: float = 1.0

    def apply(self, dtype: DeviceType) -> DeviceType:
        k = max(1, -(-self.readings // len(dtype.metrics)))  # samples per pack, rounded up
        return dtype.model_copy(
            update={"protocol": self.protocol, "samples_per_message": k,
                    "rate_hz": k / self.period_s, "prefix": f"{dtype.prefix}-{self.protocol}pack"}
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    type_name: str
    count: int
    pack: PackSpec | None = None  # this share of the type sends packs


class Engine:
    def __init__(
        self,
        catalog: Catalog,
        mix: list[DeviceSpec],
        profile: Profile,
        *,
        site: str = "site1",
        seed: int = 1,
        rate_hz: float | None = None,
        start_ns: int | None = None,
    ) -> None:
        self.profile, self.site = profile, site
        self.start_ns = start_ns if start_ns is not None else time.time_ns()
        self.groups: list[DeviceGroup] = []
        self.endpoints: list[Endpoint] = []
        truth_names: list[str] = []
        for spec in mix:
            make, base = ECOSYSTEM_TYPES.get(spec.type_name, (DeviceGroup, spec.type_name))
            if base not in catalog.types:
                known = ", ".join([*catalog.types, *ECOSYSTEM_TYPES])
                raise ValueError(f"unknown device type {spec.type_name!r}; known: {known}")
            dtype = catalog.types[base]
            if spec.pack is not None:
                if spec.type_name in ECOSYSTEM_TYPES:
                    raise ValueError(f"{spec.type_name!r} publishes as its ecosystem does")
                dtype = spec.pack.apply(dtype)
            prefix = ECOSYSTEM_PREFIXES.get(spec.type_name, dtype.prefix)
            names = [f"{prefix}-{i:05d}" for i in range(spec.count)]
            group = make(
                spec.type_name, dtype, names, len(self.endpoints), site, profile, seed,
                self.start_ns, None if spec.pack else rate_hz,
            )  # fmt: skip
            self.groups.append(group)
            self.endpoints += [Endpoint(n, site, dtype.protocol, dtype.baud) for n in names]
            truth_names += [truth_name(group, n) for n in names]
        self.truth = GroundTruth.empty()
        self._truths = [self.truth.device(site, n) for n in truth_names]
        self.stats = EngineStats()
        n = len(self.endpoints)
        self.queues: list[deque[Message] | None] = [None] * n
        self.backlog: set[int] = set()
        self.link_down_until = [0.0] * n
        self.reboot_pending: set[int] = set()
        self.transport: Transport | None = None

    @property
    def devices(self) -> int:
        return len(self.endpoints)

    def delivered(self, msg: Message) -> None:
        """Transport callback: record the message in the ground truth, once."""
        if msg.delivered:
            return
        msg.delivered = True
        truth = self._truths[msg.device]
        for seq, value in zip(msg.seqs, msg.values, strict=True):
            truth.record(seq, value)
        for seq, kind in msg.invalid:
            truth.record_invalid(seq, kind)
        if msg.noise:
            truth.record_noise(msg.payload)
        self.stats.messages += 1
        self.stats.readings += len(msg.seqs)
        self.stats.invalid += len(msg.invalid)

    async def run(self, transport: Transport, stop: asyncio.Event, t0: float | None = None) -> None:
        """Run every device until `stop` is set; `t0` (monotonic) is when round 0 starts."""
        self.transport = transport
        t0 = time.monotonic() if t0 is None else t0
        heap = [(g.due_s(0, g.order[0]), gi, 0, 0) for gi, g in enumerate(self.groups) if g.n]
        heapq.heapify(heap)
        for g in self.groups:
            g.prepare(0)
        while not stop.is_set():
            now = time.monotonic() - t0
            while heap and heap[0][0] <= now:
                due, gi, r, pos = heapq.heappop(heap)
                g = self.groups[gi]
                self._tick_device(g, g.order[pos], now - due, now)
                pos += 1
                if pos == g.n:
                    pos, r = 0, r + 1
                    g.prepare(r)
                heapq.heappush(heap, (g.due_s(r, g.order[pos]), gi, r, pos))
            self._drain_backlog(now)
            delay = min(0.05, heap[0][0] - (time.monotonic() - t0)) if heap else 0.05
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)  # let the transports read their acks

    def _tick_device(self, g: DeviceGroup, i: int, lag: float, now: float) -> None:
        dev = g.first_index + i
        st = self.stats
        st.sends += 1
        st.max_lag_s = max(st.max_lag_s, lag)
        if lag > g.period_s:
            st.late += 1
        faults = g.hits(i)
        if faults:
            st.faults.update(faults)
            self._apply(g, i, dev, faults, now)
        if dev in self.reboot_pending:
            self._try_reboot(g, i, dev)
        for msg in g.messages(i, faults):
            self._enqueue(dev, msg)
        self._drain(dev, now)

    def _apply(self, g: DeviceGroup, i: int, dev: int, faults: set[str], now: float) -> None:
        assert self.transport is not None
        if "clock_jump" in faults:
            g.jump_clock(i)
        if "reboot" in faults:
            self.reboot_pending.add(dev)
        if "link_drop" in faults:
            self.link_down_until[dev] = now + g.faults.link_drop_s
        if "broker_disconnect" in faults and not self.transport.cut(dev):
            self.stats.cut_failed += 1

    def _try_reboot(self, g: DeviceGroup, i: int, dev: int) -> None:
        """Reboot once nothing is in flight (an unacknowledged message may have arrived)."""
        assert self.transport is not None
        if not self.transport.idle(dev):
            return
        self.reboot_pending.discard(dev)
        q = self.queues[dev]
        if q:
            self.stats.reboot_lost += sum(m.readings for m in q)
            q.clear()
            self.backlog.discard(dev)
        g.reboot(i)

    def _enqueue(self, dev: int, msg: Message) -> None:
        q = self.queues[dev]
        if q is None:
            q = self.queues[dev] = deque()
        if len(q) >= self.profile.queue_max:
            self.stats.queue_dropped += q.popleft().readings
        q.append(msg)
        self.backlog.add(dev)

    def _drain(self, dev: int, now: float) -> None:
        assert self.transport is not None
        if self.link_down_until[dev] > now:
            return
        q = self.queues[dev]
        while q and self.transport.can_send(dev):
            self.transport.send(q.popleft())
        if not q:
            self.backlog.discard(dev)

    def _drain_backlog(self, now: float) -> None:
        for dev in list(self.backlog):
            self._drain(dev, now)

"""Simulated devices that publish as real ecosystems do, for the ground-truth checks of the
agent's mapped-JSON and Sparkplug B paths (docs/devices.md, config/devices/):

| fleet type     | publishes as                          | topic                   | signals of  |
|----------------|---------------------------------------|-------------------------|-------------|
| `tasmota_th`   | Tasmota `SENSOR` (`AM2301`, ISO time) | `tele/<name>/SENSOR`    | env_th      |
| `zigbee_th`    | Zigbee2MQTT state (`last_seen` ms)    | `zigbee2mqtt/<name>`    | env_th      |
| `shelly_plug`  | Shelly Gen2 `NotifyStatus` (`ts` s)   | `<name>/events/rpc`     | power_meter |
| `sparkplug_th` | Sparkplug B edge node: NBIRTH, NDATA  | `spBv1.0/fleet/.../<n>` | env_th      |

None of these formats numbers its readings, so the ground truth names each reading by
metric, event time and value (`unnumbered.py`), with the time as the agent will read it
(Tasmota: whole seconds; Zigbee2MQTT and Sparkplug: ms; Shelly: `ts` with 2 decimals).
Faults they can show: garbage, truncated (JSON), NaN, out of range (where the agent has a
range for the metric), clock jumps, reboots (a Sparkplug node rebirths with the next
`bdSeq`), link drops and broker disconnects. Each deliberately bad message holds one
reading and is matched by its bytes, since its dead letter cannot name a seq. They do not
send a message twice: without a seq a device's own copy cannot be told from a new reading
(edge/dedupe.py keeps it), which is a property of the format, not a fault to check.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from typing import Any

import orjson

from devices.sparkplug.payload import DOUBLE, add_session_metrics
from devices.sparkplug.sparkplug_b_pb2 import Payload
from firmware_sim import payloads
from firmware_sim.firmware import DeviceGroup, Message
from firmware_sim.payloads import Sample
from firmware_sim.unnumbered import unnumbered_seq

_MS = 1_000_000
_NAN = "\x00NaN"  # stands in for NaN while encoding JSON (orjson writes no NaN literal)
SPARKPLUG_GROUP = "fleet"


class EcosystemGroup(DeviceGroup):
    """Devices of one ecosystem type: the firmware of `DeviceGroup` (signals, clocks,
    faults), its messages in the ecosystem's shape."""

    shows = frozenset({"nan", "out_of_range", "truncated"})  # bad readings it can send

    def truth_name(self, name: str) -> str:
        """The device token the agent gives this device's readings."""
        return name

    def agent_metric(self, metric: str) -> str:
        return metric

    def agent_time(self, time_ns: int) -> int:
        return time_ns - time_ns % _MS

    def encode(self, i: int, name: str, samples: list[Sample]) -> tuple[str, bytes]:
        raise NotImplementedError

    def garbage(self) -> bytes:
        return payloads.garbage(self._bytes_rng, "json")

    def messages(self, i: int, faults: set[str]) -> list[Message]:
        """Garbage first, then the good readings in one message, then each bad one alone
        (encoded in that order: a Sparkplug node numbers them so)."""
        samples = self._samples(i)
        if samples:
            t = self.agent_time(samples[0].time_ns)
            samples = [s._replace(time_ns=t) for s in samples]
        dev, name = self.first_index + i, self.names[i]
        out: list[Message] = []
        if "garbage" in faults:
            out.append(Message(dev, self.garbage(), noise=True, topic=self.topic_of(name)))
        bad = []
        for kind in ("nan", "out_of_range", "truncated"):
            if kind in faults and kind in self.shows and samples:
                bad.append((samples.pop(self._pick[i] % len(samples)), kind))
        if samples:
            topic, payload = self.encode(i, name, samples)
            metric = self.agent_metric
            seqs = [unnumbered_seq(metric(s.metric), s.time_ns, s.value) for s in samples]
            msg = Message(dev, payload, seqs, [s.value for s in samples], topic=topic.encode())
            out.append(msg)
        out += [self._bad(i, dev, name, s, kind) for s, kind in bad]
        return out

    def topic_of(self, name: str) -> bytes:
        return self.encode(0, name, [])[0].encode()

    def _bad(self, i: int, dev: int, name: str, s: Sample, kind: str) -> Message:
        if kind == "nan":
            s = s._replace(value=math.nan)
        elif kind == "out_of_range":
            lo, hi = self.bounds[[m for m, _ in self.metrics].index(s.metric)]
            s = s._replace(value=hi + (hi - lo) * 0.5)
        topic, payload = self.encode(i, name, [s])
        if kind == "truncated":
            payload = payloads.truncate(payload, self._bytes_rng, "json")
        return Message(dev, payload, noise=True, topic=topic.encode())


def _json(doc: object) -> bytes:
    return orjson.dumps(doc).replace(b'"\\u0000NaN"', b"NaN")


def _v(x: float) -> float | str:
    return _NAN if math.isnan(x) else x


class TasmotaGroup(EcosystemGroup):
    """`tele/<name>/SENSOR` `{"Time": "...", "AM2301": {...}, "TempUnit": "C"}` (Tasmota's
    docs, AM2301): local time without offset (the profile's zone: UTC), whole seconds."""

    def truth_name(self, name: str) -> str:
        return f"{name}-AM2301"

    def agent_time(self, time_ns: int) -> int:
        return time_ns - time_ns % 1_000_000_000

    def encode(self, i: int, name: str, samples: list[Sample]) -> tuple[str, bytes]:
        topic = f"tele/{name}/SENSOR"
        if not samples:
            return topic, b""
        t = dt.datetime.fromtimestamp(samples[0].time_ns // 1_000_000_000, dt.UTC)
        sensor = {s.metric.capitalize(): _v(s.value) for s in samples}
        doc = {"Time": t.strftime("%Y-%m-%dT%H:%M:%S"), "AM2301": sensor, "TempUnit": "C"}
        return topic, _json(doc)


class ZigbeeGroup(EcosystemGroup):
    """`zigbee2mqtt/<name>` state, with `last_seen` in epoch ms (Zigbee2MQTT's
    `advanced.last_seen: epoch`)."""

    def encode(self, i: int, name: str, samples: list[Sample]) -> tuple[str, bytes]:
        topic = f"zigbee2mqtt/{name}"
        if not samples:
            return topic, b""
        doc: dict[str, object] = {s.metric: _v(s.value) for s in samples}
        doc["last_seen"] = samples[0].time_ns // _MS
        return topic, _json(doc)


class ShellyGroup(EcosystemGroup):
    """Shelly Gen2 `NotifyStatus` of a Plus 1PM on `<name>/events/rpc` (Shelly's Gen2 API
    docs, Notifications): `params.ts` in seconds with 2 decimals, `switch:0` readings."""

    shows = frozenset({"nan", "truncated"})  # the profile has no ranges for switch_0_*
    _KEYS = {"voltage": "voltage", "current": "current", "power": "apower"}

    def agent_metric(self, metric: str) -> str:
        return f"switch_0_{self._KEYS[metric]}"

    def agent_time(self, time_ns: int) -> int:
        # as the agent reads `ts` (time_format "s"): the 2 decimals as written, in ns
        return int(decimal.Decimal(f"{time_ns / 1e9:.2f}") * 1_000_000_000)

    def encode(self, i: int, name: str, samples: list[Sample]) -> tuple[str, bytes]:
        topic = f"{name}/events/rpc"
        if not samples:
            return topic, b""
        switch: dict[str, object] = {"id": 0}
        switch |= {self._KEYS[s.metric]: _v(s.value) for s in samples}
        ts = float(f"{samples[0].time_ns / 1e9:.2f}")
        params = {"ts": ts, "switch:0": switch}
        doc = {"src": name, "dst": "user_1", "method": "NotifyStatus", "params": params}
        return topic, _json(doc)


class SparkplugGroup(EcosystemGroup):
    """Each device a Sparkplug B edge node of group `fleet` with node-level metrics: an
    NBIRTH (named metrics with aliases, `bdSeq`) first and after every reboot, then NDATA
    by alias only, `seq` 0-255 wrapping. The NBIRTH's readings count, and so does the
    agent's `online` = 1 reading of it."""

    shows = frozenset({"nan", "out_of_range"})  # protobuf cut short may still parse

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # DeviceGroup's arguments
        super().__init__(*args, **kwargs)
        self.born = [False] * self.n
        self.bd_seq = [0] * self.n
        self.sp_seq = [0] * self.n
        self.aliases = {m: k + 1 for k, (m, _) in enumerate(self.metrics)}
        self._birth_time_ns = 0

    def reboot(self, i: int) -> None:
        super().reboot(i)
        self.born[i] = False
        self.bd_seq[i] = (self.bd_seq[i] + 1) % 256

    def garbage(self) -> bytes:
        return b"\x0f" + payloads.garbage(self._bytes_rng, "json")  # wire type 7: invalid

    def messages(self, i: int, faults: set[str]) -> list[Message]:
        born = self.born[i]
        out = super().messages(i, faults)
        if not born and self.born[i]:  # this round's good message was the NBIRTH
            birth = next(m for m in out if not m.noise)
            t = self._birth_time_ns
            birth.seqs.append(unnumbered_seq("online", t, 1.0))  # the agent's `online` = 1
            birth.values.append(1.0)
        return out

    def encode(self, i: int, name: str, samples: list[Sample]) -> tuple[str, bytes]:
        base = f"spBv1.0/{SPARKPLUG_GROUP}"
        if not samples:
            return f"{base}/NDATA/{name}", b""
        t_ms = samples[0].time_ns // _MS
        if not self.born[i] and all(math.isfinite(s.value) for s in samples):
            return f"{base}/NBIRTH/{name}", self._birth(i, t_ms, samples)
        self.sp_seq[i] = (self.sp_seq[i] + 1) % 256
        p = Payload(timestamp=t_ms, seq=self.sp_seq[i])
        for s in samples:
            p.metrics.add(alias=self.aliases[s.metric], timestamp=t_ms, datatype=DOUBLE,
                          double_value=s.value)  # fmt: skip
        return f"{base}/NDATA/{name}", p.SerializeToString()

    def _birth(self, i: int, t_ms: int, samples: list[Sample]) -> bytes:
        """NBIRTH defining every metric (null where the sensor gave nothing this round)."""
        self.born[i], self.sp_seq[i] = True, 0
        self._birth_time_ns = t_ms * _MS
        p = Payload(timestamp=t_ms, seq=0)
        add_session_metrics(p, t_ms, self.bd_seq[i])
        values = {s.metric: s.value for s in samples}
        for metric, _unit in self.metrics:
            m = p.metrics.add(name=metric.capitalize(), alias=self.aliases[metric],
                              timestamp=t_ms, datatype=DOUBLE)  # fmt: skip
            if metric in values:
                m.double_value = values[metric]
            else:
                m.is_null = True
        return p.SerializeToString()


# fleet type -> (its group, the catalog type whose signals it sends)
ECOSYSTEM_TYPES: dict[str, tuple[type[EcosystemGroup], str]] = {
    "tasmota_th": (TasmotaGroup, "env_th"),
    "zigbee_th": (ZigbeeGroup, "env_th"),
    "shelly_plug": (ShellyGroup, "power_meter"),
    "sparkplug_th": (SparkplugGroup, "env_th"),
}
ECOSYSTEM_PREFIXES = {"tasmota_th": "tas", "zigbee_th": "z2m", "shelly_plug": "shellyplus1pm",
                      "sparkplug_th": "spb"}  # fmt: skip


def truth_name(group: DeviceGroup, name: str) -> str:
    """The device token the agent gives the readings of `group`'s device `name`."""
    return group.truth_name(name) if isinstance(group, EcosystemGroup) else name

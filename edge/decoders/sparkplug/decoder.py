"""Sparkplug B (format `sparkplug`): an edge node's births, data and deaths -> readings.

Unlike the other decoders this one keeps state (`state.py`): a data message may name its
metrics by alias only, resolved from the last NBIRTH/DBIRTH, and `seq` must count on from
the message before. When the agent cannot decode truthfully (data before any birth, an
alias no birth defined) the message is a dead letter with the reason, and the node is asked
to rebirth; a `seq` gap keeps the message's readings (they are decoded correctly) but asks
for a rebirth too, since messages in the gap may have redefined nothing we can see. The
request is an NCMD `Node Control/Rebirth` = true, published through the same broker
connection the message came by (`Context.publish`), at most once per `REBIRTH_RETRY_NS`.

Birth and death are readings too: metric `online`, 1 at NBIRTH/DBIRTH, 0 at NDEATH (for
the node and each device it had online) and DDEATH. An NDEATH whose `bdSeq` is not the one
of the node's last NBIRTH is an old session's will and changes nothing.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable

from google.protobuf.message import DecodeError as ProtobufDecodeError

from devices.sparkplug.payload import (
    BD_SEQ_METRIC,
    Metric,
    eng_unit,
    integer_metric,
    numeric_value,
    rebirth_request,
)
from devices.sparkplug.sparkplug_b_pb2 import Payload
from edge.decoders.context import NO_SEQ, Context, make_reading
from edge.decoders.mapping import CompiledMapping, MappedDecoder, MetricRule
from edge.decoders.sparkplug.state import (
    MAX_DEVICES_PER_NODE,
    MAX_METRICS_PER_BIRTH,
    MAX_NODES,
    Definitions,
    DeviceState,
    MetricDef,
    NodeKey,
    NodeState,
    NodeTable,
)
from edge.decoders.sparkplug.topic import SparkplugTopic, node_command_topic, parse_topic
from edge.errors import DecodeError
from gateway.reading import Reading

ONLINE_METRIC = "online"
REBIRTH_RETRY_NS = 5_000_000_000
_MS = 1_000_000
# Metrics that control the node or describe the session, not measurements.
_CONTROL_PREFIXES = ("Node Control/", "Device Control/")


class SparkplugDecoder(MappedDecoder):
    def __init__(self, mapping: CompiledMapping) -> None:
        super().__init__(mapping)
        self.nodes = NodeTable()
        self.events: Counter[str] = Counter()  # births, deaths, gaps, requests: agent stats
        self._asked: OrderedDict[NodeKey, int] = OrderedDict()  # rebirth asked, when (ns)

    def __call__(self, payload: bytes, ctx: Context) -> list[Reading]:
        topic = parse_topic(ctx.topic)
        if topic.type in ("STATE", "NCMD", "DCMD"):
            return []  # host state and commands: not an edge node's readings
        msg = parse_payload(payload)
        key = NodeKey(topic.group, topic.edge_node)
        if topic.type == "NBIRTH":
            return self._node_birth(key, topic, msg, ctx)
        if topic.type == "NDEATH":
            return self._node_death(key, topic, msg, ctx)
        node = self.nodes.get(key)
        if node is None or not node.online:
            self._ask_rebirth(key, ctx, "no_birth")
            raise DecodeError("no_birth", f"{topic.type} from {_name(topic)} before its NBIRTH")
        self._check_seq(key, node, msg, ctx)
        if topic.type == "NDATA":
            return self._readings(key, topic, node.definitions, msg.metrics, msg, ctx)
        assert topic.device is not None
        if topic.type == "DBIRTH":
            return self._device_birth(key, node, topic, msg, ctx)
        device = node.devices.get(topic.device)
        if device is None or not device.online:
            self._ask_rebirth(key, ctx, "no_birth")
            raise DecodeError("no_birth", f"{topic.type} from {_name(topic)} before its DBIRTH")
        if topic.type == "DDEATH":
            device.online = False
            self.events["device_deaths"] += 1
            return [self._online(topic, 0.0, msg, ctx)]
        return self._readings(key, topic, device.definitions, msg.metrics, msg, ctx)

    # -- births and deaths -----------------------------------------------------------------
    def _node_birth(
        self, key: NodeKey, topic: SparkplugTopic, msg: Payload, ctx: Context
    ) -> list[Reading]:
        defs = _definitions(msg.metrics)
        node = NodeState(integer_metric(msg, BD_SEQ_METRIC), msg.seq, defs)
        self.nodes.put(key, node)
        self._asked.pop(key, None)
        self.events["node_births"] += 1
        out = self._readings(key, topic, defs, msg.metrics, msg, ctx)
        return [self._online(topic, 1.0, msg, ctx), *out]

    def _device_birth(
        self, key: NodeKey, node: NodeState, topic: SparkplugTopic, msg: Payload, ctx: Context
    ) -> list[Reading]:
        assert topic.device is not None
        if topic.device not in node.devices and len(node.devices) >= MAX_DEVICES_PER_NODE:
            raise DecodeError("too_many_devices", f"{_name(topic)}: over {MAX_DEVICES_PER_NODE}")
        defs = _definitions(msg.metrics)
        node.devices[topic.device] = DeviceState(defs)
        self.events["device_births"] += 1
        out = self._readings(key, topic, defs, msg.metrics, msg, ctx)
        return [self._online(topic, 1.0, msg, ctx), *out]

    def _node_death(
        self, key: NodeKey, topic: SparkplugTopic, msg: Payload, ctx: Context
    ) -> list[Reading]:
        node = self.nodes.get(key)
        bd_seq = integer_metric(msg, BD_SEQ_METRIC)
        if node is None or not node.online:
            return []  # nothing of it is online here: nothing changes
        if bd_seq is not None and node.bd_seq is not None and bd_seq != node.bd_seq:
            self.events["stale_deaths"] += 1  # an older session's will (its bdSeq)
            return []
        node.online = False
        self.events["node_deaths"] += 1
        out = [self._online(topic, 0.0, msg, ctx)]
        for name, device in node.devices.items():
            if device.online:
                device.online = False
                dev_topic = SparkplugTopic(topic.group, "DDEATH", topic.edge_node, name)
                out.append(self._online(dev_topic, 0.0, msg, ctx))
        return out

    # -- sequence and rebirth --------------------------------------------------------------
    def _check_seq(self, key: NodeKey, node: NodeState, msg: Payload, ctx: Context) -> None:
        if not msg.HasField("seq"):
            return
        expected, node.last_seq = node.next_seq(), msg.seq
        if msg.seq != expected:
            self.events["seq_gaps"] += 1
            self._ask_rebirth(key, ctx, "seq_gap")

    def _ask_rebirth(self, key: NodeKey, ctx: Context, why: str) -> None:
        if ctx.publish is None:  # `gateway decode`: no broker to ask through
            return
        last = self._asked.get(key)
        if last is not None and ctx.received_ns - last < REBIRTH_RETRY_NS:
            return
        self._asked[key] = ctx.received_ns
        self._asked.move_to_end(key)
        while len(self._asked) > MAX_NODES:
            self._asked.popitem(last=False)
        ctx.publish(
            node_command_topic(key.group, key.edge_node),
            rebirth_request(ctx.received_ns // _MS),
        )
        self.events[f"rebirth_requests_{why}"] += 1

    # -- readings --------------------------------------------------------------------------
    def _identity(self, topic: SparkplugTopic, ctx: Context) -> tuple[str, str]:
        return self.m.identity(ctx, topic.parts())

    def _online(self, topic: SparkplugTopic, value: float, msg: Payload, ctx: Context) -> Reading:
        site, device = self._identity(topic, ctx)
        t = msg.timestamp * _MS if msg.timestamp else ctx.received_ns
        return make_reading(site, device, ONLINE_METRIC, value, "", t, NO_SEQ)

    def _unit(self, rule: MetricRule, d: MetricDef) -> str:
        """The config's unit for the metric, else the birth's `engUnit` (through the
        mapping's `units` table), else the mapping's default."""
        if rule.unit or not d.unit:
            return self.m.unit(rule, None)
        return self.m.settings.units.get(d.unit, d.unit)

    def _readings(
        self,
        key: NodeKey,
        topic: SparkplugTopic,
        defs: Definitions,
        metrics: Iterable[Metric],
        msg: Payload,
        ctx: Context,
    ) -> list[Reading]:
        site, device = self._identity(topic, ctx)
        parts = topic.parts()
        base_ns = msg.timestamp * _MS if msg.timestamp else ctx.received_ns
        out: list[Reading] = []
        for m in metrics:
            d = _lookup(defs, m)
            if d is None:
                self._ask_rebirth(key, ctx, "unknown_alias")
                raise DecodeError("unknown_alias", f"{_name(topic)}: alias {m.alias} not in birth")
            if d.name.startswith(_CONTROL_PREFIXES) or d.name == BD_SEQ_METRIC:
                continue
            value = numeric_value(m, m.datatype or d.datatype)
            if value is None:
                continue
            leaf = {**parts, "path": d.name, "key": d.name.rsplit("/", 1)[-1]}
            rule = self.m.rule(d.name, leaf)
            if rule is None:
                continue
            t = m.timestamp * _MS if m.timestamp else base_ns
            unit = self._unit(rule, d)
            out.append(make_reading(site, device, rule.name, value * rule.scale, unit, t, NO_SEQ))
        return out


def parse_payload(data: bytes) -> Payload:
    payload = Payload()
    try:
        payload.ParseFromString(data)
    except ProtobufDecodeError as exc:
        raise DecodeError("invalid_protobuf", str(exc) or "not a Sparkplug B payload") from None
    return payload


def _definitions(metrics: Iterable[Metric]) -> Definitions:
    defs = Definitions()
    for i, m in enumerate(metrics):
        if i >= MAX_METRICS_PER_BIRTH:
            raise DecodeError("too_many_metrics", f"birth over {MAX_METRICS_PER_BIRTH}")
        if not m.name:
            raise DecodeError("invalid_birth", f"metric {i} of a birth has no name")
        d = MetricDef(m.name, m.datatype, eng_unit(m))
        defs.add(m.alias if m.HasField("alias") else None, d)
    return defs


def _lookup(defs: Definitions, m: Metric) -> MetricDef | None:
    """A data message's metric: by name (its birth's datatype if it gives none), or by
    alias."""
    if m.name:
        return defs.by_name.get(m.name) or MetricDef(m.name, m.datatype)
    if m.HasField("alias"):
        return defs.by_alias.get(m.alias)
    return None


def _name(topic: SparkplugTopic) -> str:
    node = f"{topic.group}/{topic.edge_node}"
    return node if topic.device is None else f"{node}/{topic.device}"

"""What a Sparkplug B host must remember per edge node: the metric definitions of its last
NBIRTH/DBIRTHs (names, aliases, datatypes), its `bdSeq` and last `seq`, and which of its
devices are online. Typed records, bounded in nodes, devices and metrics, so a misbehaving
network cannot grow the agent's memory without limit."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

MAX_NODES = 10_000
MAX_DEVICES_PER_NODE = 1_000
MAX_METRICS_PER_BIRTH = 10_000
SEQ_MODULO = 256  # `seq` counts 0-255 and wraps (Sparkplug B 3.0, tck-id-payloads-sequence-num)


@dataclass(frozen=True, slots=True)
class NodeKey:
    group: str
    edge_node: str


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric as a birth defines it; data messages may name it by `alias` only."""

    name: str
    datatype: int
    unit: str = ""  # its `engUnit` property, if the birth gave one


@dataclass(slots=True)
class Definitions:
    """Metric definitions of one birth: alias -> definition."""

    by_alias: dict[int, MetricDef] = field(default_factory=dict)
    by_name: dict[str, MetricDef] = field(default_factory=dict)

    def add(self, alias: int | None, d: MetricDef) -> None:
        self.by_name[d.name] = d
        if alias is not None:
            self.by_alias[alias] = d


@dataclass(slots=True)
class DeviceState:
    definitions: Definitions
    online: bool = True


@dataclass(slots=True)
class NodeState:
    bd_seq: int | None  # from NBIRTH's `bdSeq` metric; the NDEATH that carries it is ours
    last_seq: int
    definitions: Definitions
    devices: dict[str, DeviceState] = field(default_factory=dict)
    online: bool = True
    rebirth_requested_ns: int = 0  # when we last asked; 0: not waiting for a rebirth

    def next_seq(self) -> int:
        return (self.last_seq + 1) % SEQ_MODULO


class NodeTable:
    """Nodes by (group, edge node), least recently heard-from forgotten first when full: a
    forgotten node that speaks again is asked to rebirth, so nothing is decoded wrongly."""

    def __init__(self, max_nodes: int = MAX_NODES) -> None:
        self.max_nodes = max_nodes
        self._nodes: OrderedDict[NodeKey, NodeState] = OrderedDict()

    def get(self, key: NodeKey) -> NodeState | None:
        node = self._nodes.get(key)
        if node is not None:
            self._nodes.move_to_end(key)
        return node

    def put(self, key: NodeKey, node: NodeState) -> None:
        self._nodes[key] = node
        self._nodes.move_to_end(key)
        while len(self._nodes) > self.max_nodes:
            self._nodes.popitem(last=False)

    def __len__(self) -> int:
        return len(self._nodes)

    def online_counts(self) -> tuple[int, int]:
        """(nodes online, devices online)."""
        nodes = sum(1 for n in self._nodes.values() if n.online)
        devices = sum(
            1 for n in self._nodes.values() if n.online for d in n.devices.values() if d.online
        )
        return nodes, devices

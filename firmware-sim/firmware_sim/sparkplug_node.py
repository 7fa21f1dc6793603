"""A simulated Sparkplug B edge node: the messages it publishes, as (topic, payload) pairs.

Pure: the caller publishes them (and the NDEATH as the connection's will). The node births
(NBIRTH, then a DBIRTH per device, defining every metric with a name and an alias), sends
data by alias only, counts `seq` 0-255 wrapping over everything but NDEATH, and numbers its
sessions with `bdSeq`, carried by NBIRTH and by the NDEATH that ends that session. A fault
`skip_seq` loses one message's number, as a node whose message was lost would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from devices.sparkplug.payload import (
    BD_SEQ_METRIC,
    DOUBLE,
    REBIRTH_METRIC,
    UINT64,
    add_session_metrics,
)
from devices.sparkplug.sparkplug_b_pb2 import Payload

NAMESPACE = "spBv1.0"


@dataclass(frozen=True, slots=True)
class NodeMessage:
    topic: str
    payload: bytes


class SparkplugNode:
    def __init__(self, group: str, edge_node: str, devices: Mapping[str, Sequence[str]]) -> None:
        """`devices`: device name -> its metric names (all Double)."""
        self.group, self.edge_node = group, edge_node
        self.devices = {d: list(ms) for d, ms in devices.items()}
        self.bd_seq = 0
        self._seq = 0
        self._aliases: dict[tuple[str, str], int] = {}
        for d, metrics in self.devices.items():
            for m in metrics:
                self._aliases[(d, m)] = len(self._aliases) + 1

    def _topic(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group}/{kind}/{self.edge_node}"
        return base if device is None else f"{base}/{device}"

    def _next_seq(self) -> int:
        seq, self._seq = self._seq, (self._seq + 1) % 256
        return seq

    def skip_seq(self) -> None:
        """Fault: one `seq` is never published."""
        self._next_seq()

    def birth(self, now_ms: int, values: Mapping[tuple[str, str], float]) -> list[NodeMessage]:
        """NBIRTH (seq 0, this session's bdSeq) and one DBIRTH per device with `values`."""
        self._seq = 0
        nb = Payload(timestamp=now_ms, seq=self._next_seq())
        add_session_metrics(nb, now_ms, self.bd_seq)
        out = [NodeMessage(self._topic("NBIRTH"), nb.SerializeToString())]
        for d, metrics in self.devices.items():
            db = Payload(timestamp=now_ms, seq=self._next_seq())
            for m in metrics:
                db.metrics.add(
                    name=m,
                    alias=self._aliases[(d, m)],
                    timestamp=now_ms,
                    datatype=DOUBLE,
                    double_value=values[(d, m)],
                )
            out.append(NodeMessage(self._topic("DBIRTH", d), db.SerializeToString()))
        return out

    def data(self, device: str, now_ms: int, values: Mapping[str, float]) -> NodeMessage:
        """DDATA naming its metrics by alias only."""
        p = Payload(timestamp=now_ms, seq=self._next_seq())
        for m, v in values.items():
            p.metrics.add(
                alias=self._aliases[(device, m)], timestamp=now_ms, datatype=DOUBLE, double_value=v
            )
        return NodeMessage(self._topic("DDATA", device), p.SerializeToString())

    def death(self) -> NodeMessage:
        """NDEATH of this session (the MQTT will); the next birth starts a new session."""
        p = Payload()
        p.metrics.add(name=BD_SEQ_METRIC, datatype=UINT64, long_value=self.bd_seq)
        return NodeMessage(self._topic("NDEATH"), p.SerializeToString())

    def next_session(self) -> None:
        self.bd_seq = (self.bd_seq + 1) % 256

    @staticmethod
    def is_rebirth_request(payload: bytes) -> bool:
        p = Payload()
        p.ParseFromString(payload)
        return any(m.name == REBIRTH_METRIC and m.boolean_value for m in p.metrics)

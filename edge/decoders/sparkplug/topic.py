"""Sparkplug B topic namespace: `spBv1.0/{group}/{type}/{edge_node}[/{device}]`, and the
host application's `spBv1.0/STATE/{host_id}`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edge.errors import DecodeError

NAMESPACE = "spBv1.0"
MessageType = Literal[
    "NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "DCMD", "STATE"
]
_NODE_TYPES = frozenset({"NBIRTH", "NDATA", "NDEATH", "NCMD"})
_DEVICE_TYPES = frozenset({"DBIRTH", "DDATA", "DDEATH", "DCMD"})


@dataclass(frozen=True, slots=True)
class SparkplugTopic:
    group: str
    type: MessageType
    edge_node: str
    device: str | None  # device messages only

    def parts(self) -> dict[str, str]:
        """Template values (`{group}`, `{edge_node}`, `{device}`) for site and device."""
        out = {"group": self.group, "edge_node": self.edge_node}
        if self.device is not None:
            out["device"] = self.device
        return out


def parse_topic(topic: str) -> SparkplugTopic:
    """The topic's parts, or `DecodeError` `not_sparkplug` naming what is wrong."""
    levels = topic.split("/")
    if levels[0] != NAMESPACE:
        raise DecodeError("not_sparkplug", f"{topic!r} is not under {NAMESPACE}/")
    if len(levels) == 3 and levels[1] == "STATE":
        return SparkplugTopic("", "STATE", levels[2], None)
    if len(levels) == 4 and levels[2] in _NODE_TYPES:
        return SparkplugTopic(levels[1], levels[2], levels[3], None)  # type: ignore[arg-type]
    if len(levels) == 5 and levels[2] in _DEVICE_TYPES:
        return SparkplugTopic(levels[1], levels[2], levels[3], levels[4])  # type: ignore[arg-type]
    raise DecodeError("not_sparkplug", f"{topic!r}: want {NAMESPACE}/group/TYPE/node[/device]")


def node_command_topic(group: str, edge_node: str) -> str:
    return f"{NAMESPACE}/{group}/NCMD/{edge_node}"

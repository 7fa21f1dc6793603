"""The Sparkplug B decoder without a broker: births define aliases, data by alias, seq gaps,
data before a birth, deaths (bdSeq), and what is refused with which reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from firmware_sim.sparkplug_node import NodeMessage, SparkplugNode
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.sparkplug.sparkplug_b_pb2 import Payload
from edge.decoders import Context, build_decoder
from edge.errors import DecodeError
from gateway.config import MappingSettings, MetricMapping
from gateway.reading import Reading

T0_MS = 1_700_000_000_000
NOW = T0_MS * 1_000_000 + 5
SAMPLE = Path(__file__).parent / "samples" / "18-sparkplug-b-ddata.bin"
SAMPLE_TOPIC = "spBv1.0/Sparkplug B Devices/DDATA/Python Edge Node 1/Emulated Device"


class Harness:
    def __init__(self, mapping: MappingSettings | None = None) -> None:
        self.decoder = build_decoder("sources.0.mapping", "sparkplug", mapping)
        self.sent: list[tuple[str, bytes]] = []
        self.now = NOW

    def __call__(self, msg: NodeMessage) -> list[Reading]:
        self.now += 1_000_000
        publish = lambda t, p: self.sent.append((t, p))  # noqa: E731
        ctx = Context.for_topic("s1", msg.topic, self.now, publish)
        readings: list[Reading] = self.decoder(msg.payload, ctx)
        return readings

    @property
    def events(self) -> dict[str, int]:
        return dict(self.decoder.events)  # type: ignore[attr-defined]


def _node() -> SparkplugNode:
    return SparkplugNode("g1", "node 1", {"pump": ["Flow", "Inlet/Pressure"]})


def _birth(h: Harness, node: SparkplugNode) -> list[Reading]:
    values = {("pump", "Flow"): 1.5, ("pump", "Inlet/Pressure"): 2.5}
    return [r for m in node.birth(T0_MS, values) for r in h(m)]


def test_birth_then_aliased_data_gives_named_readings() -> None:
    h, node = Harness(), _node()
    births = _birth(h, node)
    assert [(r.device, r.metric, r.value) for r in births] == [
        ("node__201", "online", 1.0),
        ("node__201__2Fpump", "online", 1.0),
        ("node__201__2Fpump", "flow", 1.5),
        ("node__201__2Fpump", "inlet_pressure", 2.5),
    ]
    got = h(node.data("pump", T0_MS + 1000, {"Flow": 3.25}))
    assert [(r.site, r.device, r.metric, r.value, r.time_ns) for r in got] == [
        ("s1", "node__201__2Fpump", "flow", 3.25, (T0_MS + 1000) * 1_000_000)
    ]
    assert h.sent == []
    assert h.events == {"node_births": 1, "device_births": 1}


def test_seq_gap_keeps_readings_and_asks_for_a_rebirth_once() -> None:
    h, node = Harness(), _node()
    _birth(h, node)
    node.skip_seq()
    got = h(node.data("pump", T0_MS + 1000, {"Flow": 4.0}))
    assert [r.value for r in got] == [4.0]
    h(node.data("pump", T0_MS + 2000, {"Flow": 5.0}))  # in order again: no second request
    assert [t for t, _ in h.sent] == ["spBv1.0/g1/NCMD/node 1"]
    assert SparkplugNode.is_rebirth_request(h.sent[0][1])
    assert h.events["seq_gaps"] == 1


def test_seq_wraps_at_256_without_a_gap() -> None:
    h, node = Harness(), _node()
    _birth(h, node)
    for i in range(300):
        h(node.data("pump", T0_MS + i, {"Flow": float(i)}))
    assert h.sent == []


def test_data_before_birth_is_a_dead_letter_and_asks_for_a_rebirth() -> None:
    h = Harness()
    with pytest.raises(DecodeError) as exc:
        h(NodeMessage(SAMPLE_TOPIC, SAMPLE.read_bytes()))
    assert exc.value.reason == "no_birth"
    assert h.sent[0][0] == "spBv1.0/Sparkplug B Devices/NCMD/Python Edge Node 1"


def test_the_shared_sample_decodes_after_its_births() -> None:
    h = Harness()
    nb = Payload(timestamp=T0_MS, seq=5)
    h(NodeMessage("spBv1.0/Sparkplug B Devices/NBIRTH/Python Edge Node 1", nb.SerializeToString()))
    db = Payload(timestamp=T0_MS, seq=6)
    db.metrics.add(name="Device Metric0", datatype=10, double_value=0.0)
    h(NodeMessage(SAMPLE_TOPIC.replace("DDATA", "DBIRTH"), db.SerializeToString()))
    got = h(NodeMessage(SAMPLE_TOPIC, SAMPLE.read_bytes()))  # seq 7, by name
    assert [(r.device, r.metric, r.value, r.time_ns) for r in got] == [
        (
            "Python__20Edge__20Node__201__2FEmulated__20Device",
            "device_metric0",
            21.5,
            1_700_000_000_123_000_000,
        )
    ]


def test_unknown_alias_is_a_dead_letter() -> None:
    h, node = Harness(), _node()
    _birth(h, node)
    p = Payload(timestamp=T0_MS, seq=3)
    p.metrics.add(alias=99, datatype=10, double_value=1.0)
    with pytest.raises(DecodeError) as exc:
        h(NodeMessage("spBv1.0/g1/DDATA/node 1/pump", p.SerializeToString()))
    assert exc.value.reason == "unknown_alias"
    assert h.sent


def test_death_marks_node_and_devices_offline_and_a_stale_will_is_ignored() -> None:
    h, node = Harness(), _node()
    _birth(h, node)
    old = node.death()
    node.next_session()
    _birth(h, node)
    assert h(old) == []  # bdSeq 0: the first session's will, after the second's birth
    got = h(node.death())
    assert [(r.device, r.metric, r.value) for r in got] == [
        ("node__201", "online", 0.0),
        ("node__201__2Fpump", "online", 0.0),
    ]
    with pytest.raises(DecodeError, match="no_birth"):
        h(node.data("pump", T0_MS, {"Flow": 1.0}))
    assert h.events["node_deaths"] == 1 and h.events["stale_deaths"] == 1


def test_signed_integers_and_booleans() -> None:
    h = Harness()
    p = Payload(timestamp=T0_MS, seq=0)
    p.metrics.add(name="a", datatype=1, int_value=255)  # Int8 -1 as Tahu's Python writes it
    p.metrics.add(name="b", datatype=3, int_value=2**32 - 7)  # Int32 -7, sign-extended
    p.metrics.add(name="c", datatype=4, long_value=2**64 - 9)  # Int64 -9
    p.metrics.add(name="d", datatype=7, int_value=2**32 - 1)  # UInt32 stays positive
    p.metrics.add(name="e", datatype=11, boolean_value=True)
    p.metrics.add(name="f", datatype=12, string_value="text")  # not a reading
    p.metrics.add(name="g", datatype=10, is_null=True)  # not a reading
    got = h(NodeMessage("spBv1.0/g1/NBIRTH/n1", p.SerializeToString()))
    assert {r.metric: r.value for r in got} == {
        "online": 1.0,
        "a": -1.0,
        "b": -7.0,
        "c": -9.0,
        "d": 2.0**32 - 1,
        "e": 1.0,
    }


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("spBv1.0/g1/NDATA/n1", b"\xff\xff\xff", "invalid_protobuf"),
        ("spBv1.0/g1/BOGUS/n1", b"", "not_sparkplug"),
        ("other/g1/NDATA/n1", b"", "not_sparkplug"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        Harness()(NodeMessage(topic, payload))
    assert exc.value.reason == reason


def test_commands_and_host_state_are_not_readings() -> None:
    h = Harness()
    assert h(NodeMessage("spBv1.0/g1/NCMD/n1", b"")) == []
    assert h(NodeMessage("spBv1.0/STATE/host1", b'{"online":true}')) == []


def test_group_can_be_the_site() -> None:
    h = Harness(MappingSettings(site="{group}", device="{edge_node}"))
    got = h(NodeMessage("spBv1.0/plant-7/NBIRTH/n1", Payload(seq=0).SerializeToString()))
    assert [(r.site, r.device) for r in got] == [("plant-7", "n1")]


# Verbatim test vectors of united-manufacturing-hub/benthos-umh, sparkplug_plugin/
# test_vectors.go (Apache-2.0): NBIRTH_V1 (bdSeq 88, Temperature alias 100 = 21.5), NDATA_V1
# (alias 100 = 22.5, seq 1), NDATA_GAP (27.0, seq 5), NDEATH_V1 (bdSeq 0),
# NDATA_BEFORE_BIRTH (25.0). Their timestamps are all 1750855643474 ms.
UMH_T_NS = 1_750_855_643_474 * 1_000_000
UMH = {
    "nbirth": "19-sparkplug-b-nbirth-umh.bin",
    "ndata": "20-sparkplug-b-ndata-umh.bin",
    "gap": "21-sparkplug-b-ndata-gap-umh.bin",
    "ndeath": "22-sparkplug-b-ndeath-umh.bin",
    "before_birth": "23-sparkplug-b-ndata-before-birth-umh.bin",
}


def umh(name: str) -> NodeMessage:
    kind = {"nbirth": "NBIRTH", "ndeath": "NDEATH"}.get(name, "NDATA")
    payload = (SAMPLE.parent / UMH[name]).read_bytes()
    return NodeMessage(f"spBv1.0/DeviceLevelTest/{kind}/node1", payload)


def test_umh_vectors_birth_alias_data_gap_and_a_stale_death() -> None:
    h = Harness()

    def rows(rs: list[Reading]) -> list[tuple[str, str, float, int]]:
        return [(r.device, r.metric, r.value, r.time_ns) for r in rs]

    assert rows(h(umh("nbirth"))) == [
        ("node1", "online", 1.0, UMH_T_NS),
        ("node1", "temperature", 21.5, UMH_T_NS),
    ]
    assert rows(h(umh("ndata"))) == [("node1", "temperature", 22.5, UMH_T_NS)]
    assert rows(h(umh("gap"))) == [("node1", "temperature", 27.0, UMH_T_NS)]
    assert [t for t, _ in h.sent] == ["spBv1.0/DeviceLevelTest/NCMD/node1"]
    assert h(umh("ndeath")) == []  # bdSeq 0 is not the birth's 88: an older session's will
    assert h.events["stale_deaths"] == 1 and "node_deaths" not in h.events


def test_umh_vector_data_before_birth() -> None:
    with pytest.raises(DecodeError, match="no_birth"):
        Harness()(umh("before_birth"))


def test_birth_eng_unit_property_gives_the_unit_unless_the_config_names_one() -> None:
    metrics = {"pressure": MetricMapping(unit="hPa")}
    h = Harness(MappingSettings(device="{edge_node}", units={"°C": "Cel"}, metrics=metrics))
    p = Payload(timestamp=T0_MS, seq=0)
    for name, unit, v in [("Temp", "°C", 21.0), ("Flow", "l/min", 3.0), ("Pressure", "bar", 1.0)]:
        m = p.metrics.add(name=name, alias=len(p.metrics) + 1, datatype=10, double_value=v)
        m.properties.keys.append("engUnit")
        m.properties.values.add(type=12, string_value=unit)  # 12: String
    h(NodeMessage("spBv1.0/g1/NBIRTH/n1", p.SerializeToString()))
    d = Payload(timestamp=T0_MS + 1, seq=1)
    for alias in (1, 2, 3):
        d.metrics.add(alias=alias, datatype=10, double_value=float(alias))
    got = h(NodeMessage("spBv1.0/g1/NDATA/n1", d.SerializeToString()))
    assert {(r.metric, r.unit) for r in got} == {
        ("temp", "Cel"),
        ("flow", "l/min"),
        ("pressure", "hPa"),
    }


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "STATE"]),
    payload=st.binary(max_size=200),
)
def test_any_bytes_give_readings_or_a_decode_error(kind: str, payload: bytes) -> None:
    """Whatever arrives on a Sparkplug topic: readings or a DecodeError, never a crash."""
    h = Harness()
    node = _node()
    _birth(h, node)
    device = "/pump" if kind.startswith("D") else ""
    topic = f"spBv1.0/g1/{kind}/node 1{device}" if kind != "STATE" else "spBv1.0/STATE/h"
    try:
        got = h(NodeMessage(topic, payload))
    except DecodeError:
        return
    assert all(isinstance(r, Reading) for r in got)

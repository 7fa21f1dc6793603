"""Sparkplug B payloads (protobuf, per `sparkplug_b.proto` beside this file): the numeric
value of a metric, named metrics, and the agent's rebirth request."""

from __future__ import annotations

from devices.sparkplug.sparkplug_b_pb2 import Payload

Metric = Payload.Metric

# Datatypes (sparkplug_b.proto's table): signed integers and their width in bits.
_SIGNED_BITS = {1: 8, 2: 16, 3: 32, 4: 64}
UNSIGNED = frozenset({5, 6, 7, 8})
FLOAT, DOUBLE, BOOLEAN = 9, 10, 11
NUMERIC = frozenset({*_SIGNED_BITS, *UNSIGNED, FLOAT, DOUBLE, BOOLEAN})
REBIRTH_METRIC = "Node Control/Rebirth"
BD_SEQ_METRIC = "bdSeq"
ENG_UNIT_PROPERTY = "engUnit"
UINT64 = 8


def _signed(v: int, bits: int, field_bits: int) -> int:
    """Two's complement, whether the sender sign-extended into the field (32 or 64 bits) or,
    as Tahu's Python library does, stored `value + 2**bits` for a negative value."""
    if v >= 1 << (field_bits - 1):
        return v - (1 << field_bits)
    if v >= 1 << (bits - 1):
        return v - (1 << bits)
    return v


def numeric_value(m: Metric, datatype: int) -> float | None:
    """The metric's value as a number; None for null, text, bytes, datasets, templates and
    times, which are not readings."""
    if m.is_null or datatype not in NUMERIC:
        return None
    which = m.WhichOneof("value")
    if which == "int_value":
        v: int = m.int_value
        bits = _SIGNED_BITS.get(datatype)
        return float(v if bits is None else _signed(v, bits, 32))
    if which == "long_value":
        v = m.long_value
        bits = _SIGNED_BITS.get(datatype)
        return float(v if bits is None else _signed(v, bits, 64))
    if which == "float_value":
        return float(m.float_value)
    if which == "double_value":
        return m.double_value
    if which == "boolean_value":
        return 1.0 if m.boolean_value else 0.0
    return None


def integer_metric(payload: Payload, name: str) -> int | None:
    """An integer metric found by name (`bdSeq`), or None."""
    for m in payload.metrics:
        if m.name == name:
            which = m.WhichOneof("value")
            if which == "int_value":
                return int(m.int_value)
            if which == "long_value":
                return int(m.long_value)
    return None


def eng_unit(m: Metric) -> str:
    """The metric's `engUnit` property (as Eclipse Tahu's examples set it), or ""."""
    props = m.properties
    for key, value in zip(props.keys, props.values, strict=False):
        if key == ENG_UNIT_PROPERTY and value.WhichOneof("value") == "string_value":
            return str(value.string_value)
    return ""


def add_session_metrics(payload: Payload, now_ms: int, bd_seq: int) -> None:
    """The two metrics an NBIRTH carries first: its session's `bdSeq` (which the NDEATH
    ending that session repeats) and `Node Control/Rebirth` = false."""
    payload.metrics.add(name=BD_SEQ_METRIC, timestamp=now_ms, datatype=UINT64, long_value=bd_seq)
    payload.metrics.add(
        name=REBIRTH_METRIC, timestamp=now_ms, datatype=BOOLEAN, boolean_value=False
    )


def rebirth_request(now_ms: int) -> bytes:
    """NCMD payload asking an edge node to publish its births again."""
    payload = Payload(timestamp=now_ms)
    payload.metrics.add(name=REBIRTH_METRIC, timestamp=now_ms, datatype=BOOLEAN, boolean_value=True)
    return payload.SerializeToString()

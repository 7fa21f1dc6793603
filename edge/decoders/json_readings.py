"""Plain JSON readings: one object, or an array of objects, per message.

    {"site": "s1", "device": "d1", "metric": "temperature", "value": 21.5,
     "unit": "Cel", "time": 1700000000123456789, "seq": 42}

`time` is nanoseconds since the Unix epoch; `flags` (int) is optional.
"""

from __future__ import annotations

from typing import Any

import orjson

from edge.decoders.context import MAX_READINGS_PER_MESSAGE, Context, make_reading
from edge.errors import DecodeError
from gateway.reading import Reading


def decode_json(payload: bytes, ctx: Context | None = None) -> list[Reading]:
    """Every field is required: a plain JSON reading names its own site and device."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("invalid_json", str(exc)) from None
    items = doc if isinstance(doc, list) else [doc]
    if len(items) > MAX_READINGS_PER_MESSAGE:
        raise DecodeError("too_many_readings", f"{len(items)} in one message")
    return [_reading(item) for item in items]


def _reading(obj: Any) -> Reading:
    if not isinstance(obj, dict):
        raise DecodeError("not_an_object", type(obj).__name__)
    site = _field(obj, "site", str)
    device = _field(obj, "device", str)
    metric = _field(obj, "metric", str)
    value = _field(obj, "value", (int, float))
    flags = obj.get("flags", 0)
    if not isinstance(flags, int) or isinstance(flags, bool) or not 0 <= flags < 1 << 16:
        raise DecodeError("invalid_flags", repr(flags))
    seq = _field(obj, "seq", int)
    if not 0 <= seq < 1 << 63:
        raise DecodeError("invalid_seq", repr(seq))
    time_ns = _field(obj, "time", int)
    if not 0 <= time_ns < 1 << 63:
        raise DecodeError("invalid_time", repr(time_ns))
    unit = _field(obj, "unit", str)
    return make_reading(site, device, metric, float(value), unit, time_ns, seq, flags)


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in obj:
        raise DecodeError("missing_field", name)
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, kind):
        raise DecodeError("wrong_type", f"{name}={v!r}")
    return v

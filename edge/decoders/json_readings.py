"""Plain JSON readings: one object, or an array of objects, per message.

    {"site": "s1", "device": "d1", "metric": "temperature", "value": 21.5,
     "unit": "Cel", "time": 1700000000123456789, "seq": 42}

`time` is nanoseconds since the Unix epoch; `flags` (int) is optional.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from edge.errors import DecodeError
from gateway.errors import InvalidTokenError
from gateway.reading import Reading
from gateway.subjects import check_token

MAX_READINGS_PER_MESSAGE = 10_000


def decode_json(payload: bytes, topic: str = "") -> list[Reading]:
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
    try:
        site = check_token("site", _field(obj, "site", str))
        device = check_token("device", _field(obj, "device", str))
        metric = check_token("metric", _field(obj, "metric", str))
    except InvalidTokenError as exc:
        raise DecodeError(f"invalid_{exc.kind}", str(exc)) from None
    value = _field(obj, "value", (int, float))
    if not math.isfinite(value):
        raise DecodeError("non_finite_value", repr(value))
    flags = obj.get("flags", 0)
    if not isinstance(flags, int) or isinstance(flags, bool) or not 0 <= flags < 1 << 16:
        raise DecodeError("invalid_flags", repr(flags))
    seq = _field(obj, "seq", int)
    if not 0 <= seq < 1 << 63:
        raise DecodeError("invalid_seq", repr(seq))
    time_ns = _field(obj, "time", int)
    if not 0 <= time_ns < 1 << 63:
        raise DecodeError("invalid_time", repr(time_ns))
    return Reading(
        site=site,
        device=device,
        metric=metric,
        value=float(value),
        unit=_field(obj, "unit", str),
        time_ns=time_ns,
        seq=seq,
        flags=flags,
    )


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in obj:
        raise DecodeError("missing_field", name)
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, kind):
        raise DecodeError("wrong_type", f"{name}={v!r}")
    return v

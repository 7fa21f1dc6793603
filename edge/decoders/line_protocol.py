"""InfluxDB line protocol -> readings.

    measurement[,tag=value...] field=value[,field=value...] [timestamp_ns]

`parse_line()` implements the syntax (escapes, quoted strings, `i`/`u` integers,
booleans, comments) and is tested on the protocol documentation's own examples;
`decode_line()` maps points to readings:

- device: tag `device`, else the context's device (the MQTT topic's last level);
  site: tag `site`, else the agent's site; unit: tag `unit`, else the catalog's;
- each numeric or boolean field is one reading; its metric is the field key, or the
  measurement when the key is `value`; string fields are metadata and are skipped;
- the integer field `seq` is the device sequence number, not a reading;
- no timestamp: the receive time. Timestamps are nanoseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edge.decoders.context import MAX_READINGS_PER_MESSAGE, NO_SEQ, Context, make_reading
from edge.errors import DecodeError
from gateway.reading import Reading

FieldValue = float | int | bool | str
_TRUE = {"t", "T", "true", "True", "TRUE"}
_FALSE = {"f", "F", "false", "False", "FALSE"}
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INT = re.compile(r"[+-]?\d+[iu]")


@dataclass(frozen=True, slots=True)
class Point:
    measurement: str
    tags: dict[str, str] = field(default_factory=dict)
    fields: dict[str, FieldValue] = field(default_factory=dict)
    time_ns: int | None = None


def decode_line(payload: bytes, ctx: Context) -> list[Reading]:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid_utf8", str(exc)) from None
    readings: list[Reading] = []
    for line in text.splitlines():
        point = parse_line(line)
        if point is not None:
            readings.extend(_readings(point, ctx))
        if len(readings) > MAX_READINGS_PER_MESSAGE:
            raise DecodeError("too_many_readings", f"over {MAX_READINGS_PER_MESSAGE}")
    if not readings:
        raise DecodeError("no_readings", "no line with a numeric field")
    return readings


def _readings(p: Point, ctx: Context) -> list[Reading]:
    seq = p.fields.get("seq", NO_SEQ)
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise DecodeError("wrong_type", f"seq={seq!r}")
    site = p.tags.get("site", ctx.site)
    device = p.tags.get("device", ctx.device)
    unit = p.tags.get("unit", "")
    time_ns = ctx.received_ns if p.time_ns is None else p.time_ns
    out = []
    for key, v in p.fields.items():
        if key == "seq" or isinstance(v, str):
            continue
        metric = p.measurement if key == "value" else key
        out.append(make_reading(site, device, metric, float(v), unit, time_ns, seq))
    return out


def parse_line(line: str) -> Point | None:
    """One line of line protocol; None for a blank line or a comment."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    series, pos = _until_space(stripped, 0, quotes=False)
    fields_text, pos = _until_space(stripped, pos, quotes=True)
    stamp = stripped[pos:].strip()
    keys = _split(series, ",")
    measurement = _unescape(keys[0])
    if not measurement:
        raise DecodeError("invalid_line", "empty measurement")
    tags = {k: _unescape(v) for k, v in (_pair(t) for t in keys[1:])}
    if not fields_text:
        raise DecodeError("invalid_line", "no fields")
    fields = {k: _field_value(v) for k, v in (_pair(f) for f in _split(fields_text, ","))}
    return Point(measurement, tags, fields, _timestamp(stamp) if stamp else None)


def _until_space(s: str, pos: int, *, quotes: bool) -> tuple[str, int]:
    """The text from `pos` to the next unescaped space outside quotes, and where it ends."""
    i, in_quotes = pos, False
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if quotes and c == '"':
            in_quotes = not in_quotes
        elif c == " " and not in_quotes:
            return s[pos:i], i + 1
        i += 1
    if in_quotes:
        raise DecodeError("invalid_line", "unterminated string")
    return s[pos:], len(s)


def _split(s: str, sep: str) -> list[str]:
    """Split on unescaped `sep` outside double quotes."""
    parts, start, i, in_quotes = [], 0, 0, False
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            in_quotes = not in_quotes
        elif c == sep and not in_quotes:
            parts.append(s[start:i])
            start = i + 1
        i += 1
    parts.append(s[start:])
    if any(not p for p in parts):
        raise DecodeError("invalid_line", f"empty element in {s!r}")
    return parts


def _pair(s: str) -> tuple[str, str]:
    i = 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        if s[i] == "=":
            key = _unescape(s[:i])
            if not key:
                raise DecodeError("invalid_line", f"empty key in {s!r}")
            return key, s[i + 1 :]
        i += 1
    raise DecodeError("invalid_line", f"no '=' in {s!r}")


def _unescape(s: str) -> str:
    return re.sub(r"\\([,= \"\\])", r"\1", s)


def _field_value(raw: str) -> FieldValue:
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        return re.sub(r'\\(["\\])', r"\1", raw[1:-1])
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    if _INT.fullmatch(raw):
        n = int(raw[:-1])
        if not -(1 << 63) <= n < (1 << 64):
            raise DecodeError("invalid_line", f"integer out of range: {raw}")
        return n
    if _FLOAT.fullmatch(raw):
        return float(raw)
    raise DecodeError("invalid_line", f"bad field value {raw!r}")


def _timestamp(raw: str) -> int:
    if not re.fullmatch(r"-?\d{1,19}", raw):
        raise DecodeError("invalid_line", f"bad timestamp {raw!r}")
    return int(raw)

"""SenML (RFC 8428) JSON packs -> readings.

Two steps, both pure: `resolve()` applies the RFC's base-field rules (section 4.6) and
returns one `Record` per entry with its full name, unit, value and absolute time;
`decode_senml()` maps each record to a reading.

Mapping a resolved name to device and metric: the name is split at its last `/` or `:`
(`urn:dev:ow:10e2073a01080063:voltage` -> device `urn:dev:ow:10e2073a01080063`, metric
`voltage`); a device URN of RFC 9039's form `urn:dev:<kind>:<id>` becomes `<id>`. A name
without a separator is a metric of the context's device (the MQTT topic's last level).
Our extension field `seq` (a record's device sequence number) is optional; without it the
reading is not deduplicated by sequence number.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from edge.decoders.context import (
    MAX_READINGS_PER_MESSAGE,
    NO_SEQ,
    Context,
    SeriesColumns,
    make_reading,
)
from edge.errors import DecodeError
from gateway.reading import Reading

SENML_VERSION = 10
RELATIVE_LIMIT_S = 1 << 28  # times below 2**28 s are relative to now (RFC 8428 4.5.3)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*")
_URN_DEV = re.compile(r"urn:dev:[a-z]+:")
_BASE = {"bn": str, "bt": (int, float), "bu": str, "bv": (int, float), "bs": (int, float)}
_KNOWN = {"bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut"}
_KNOWN |= {"seq"}  # our extension


@dataclass(frozen=True, slots=True)
class Record:
    """One resolved SenML record (RFC 8428 section 4.6)."""

    name: str
    unit: str
    value: float | str | bool | None  # v (with bv added), vs, vb or vd; None if sum only
    time_ns: int
    seq: int = NO_SEQ


def decode_senml(payload: bytes, ctx: Context) -> list[Reading]:
    readings = []
    for name, unit, value, time_ns, seq in _numeric_records(payload, ctx):
        device, metric = split_name(name, ctx.device, unit)
        readings.append(make_reading(ctx.site, device, metric, value, unit, time_ns, seq))
    return readings


def decode_senml_columns(payload: bytes, ctx: Context) -> list[SeriesColumns] | None:
    """The same readings as `decode_senml`, as columns per series (the agent's fast path
    for packs: no per-reading objects). Raises the same `DecodeError`s. None when a
    series comes with more than one unit in the pack: each reading then needs its own
    unit check, in order, which the reading-by-reading path does."""
    records = _numeric_records(payload, ctx)
    groups: dict[tuple[str | None, str], tuple[str, list[int]]] = {}
    for i, (name, unit, value, time_ns, seq) in enumerate(records):
        device, metric = split_name(name, ctx.device, unit)
        group = groups.get((device, metric))
        if group is None:  # the shared checks, once per series
            make_reading(ctx.site, device, metric, value, unit, time_ns, seq)
            groups[(device, metric)] = (unit, [i])
        elif group[0] != unit:
            return None
        else:
            group[1].append(i)
    _, _, values, times, seqs = zip(*records, strict=True)
    value_col = np.array(values, dtype=np.float64)
    time_col = np.array(times, dtype=np.int64)
    seq_col = np.array(seqs, dtype=np.int64)
    out = []
    for (device, metric), (unit, rows) in groups.items():
        idx = np.array(rows) if len(groups) > 1 else slice(None)
        cols = SeriesColumns(
            ctx.site, str(device), metric, unit, value_col[idx], time_col[idx], seq_col[idx]
        )
        out.append(cols)
    return out


_Numeric = tuple[str, str, float, int, int]
_INT63 = 1 << 63


def _numeric_records(payload: bytes, ctx: Context) -> list[_Numeric]:
    records = _resolve(payload, ctx.received_ns)
    if not records:
        raise DecodeError("empty_pack", "base fields only")
    out: list[_Numeric] = []
    for name, unit, value, time_ns, seq in records:
        if isinstance(value, bool):
            value = 1.0 if value else 0.0
        elif not isinstance(value, float):
            raise DecodeError("non_numeric_value", f"{name}: {value!r}")
        if not NO_SEQ <= seq < _INT63:  # as `make_reading` checks; here for the columns too
            raise DecodeError("invalid_seq", repr(seq))
        if not 0 <= time_ns < _INT63:
            raise DecodeError("invalid_time", repr(time_ns))
        out.append((name, unit, value, time_ns, seq))
    return out


# A name that is a device URN alone (RFC 8428 5.1.1: `urn:dev:ow:10e2073a01080063`, in
# Cel) names no metric: the unit says what was measured.
_UNIT_METRICS = {
    "Cel": "temperature",
    "%RH": "humidity",
    "V": "voltage",
    "A": "current",
    "W": "power",
    "Pa": "pressure",
    "lx": "illuminance",
}


@functools.lru_cache(maxsize=4096)
def split_name(name: str, default_device: str | None, unit: str = "") -> tuple[str | None, str]:
    whole = _URN_DEV.match(name)
    if whole and not any(c in name[whole.end() :] for c in "/:"):
        return name[whole.end() :], _UNIT_METRICS.get(unit, "value")
    cut = max(name.rfind("/"), name.rfind(":"))
    if cut < 0:
        return default_device, name
    device = name[:cut]
    urn = _URN_DEV.match(device)
    if urn:
        device = device[urn.end() :]
    return device, name[cut + 1 :]


def resolve(payload: bytes, now_ns: int) -> list[Record]:
    """Resolve a SenML JSON pack; raise `DecodeError` for anything RFC 8428 forbids."""
    return [Record(*fields) for fields in _resolve(payload, now_ns)]


_Fields = tuple[str, str, float | str | bool | None, int, int]  # as in `Record`


def _resolve(payload: bytes, now_ns: int) -> list[_Fields]:
    try:
        pack = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("invalid_json", str(exc)) from None
    if not isinstance(pack, list):
        raise DecodeError("not_a_pack", "a SenML pack is a JSON array")
    if not pack:
        raise DecodeError("empty_pack")
    if len(pack) > MAX_READINGS_PER_MESSAGE:
        raise DecodeError("too_many_readings", f"{len(pack)} in one message")
    base: dict[str, Any] = {"bn": "", "bt": 0, "bu": "", "bv": 0, "bt_ns": 0}
    records = [_record(entry, base, now_ns) for entry in pack]
    return [r for r in records if r is not None]


def _record(entry: Any, base: dict[str, Any], now_ns: int) -> _Fields | None:
    """The resolved record; None for a record of base fields only (it sets them)."""
    if type(entry) is dict and entry.keys() <= _PLAIN:
        plain = _plain_record(entry, base, now_ns)
        if plain is not None:
            return plain
    if not isinstance(entry, dict):
        raise DecodeError("not_an_object", type(entry).__name__)
    for key in entry:
        if key not in _KNOWN:
            if key.endswith("_"):  # must-understand extension (RFC 8428 4.4)
                raise DecodeError("unsupported_field", key)
    _check_version(entry)
    for key, kind in _BASE.items():
        if key in entry:
            base[key] = _typed(entry, key, kind)
    if "bt" in entry:
        base["bt_ns"] = _ns(base["bt"])  # once per base time, not per record
    if entry.keys() <= _BASE.keys() | {"bver"}:
        return None
    name = base["bn"] + _typed(entry, "n", str, "")
    if not _NAME.fullmatch(name):
        raise DecodeError("invalid_name", repr(name))
    return (
        name,
        _typed(entry, "u", str, base["bu"]),
        _value(entry, base["bv"]),
        _time_ns(base["bt_ns"], _typed(entry, "t", (int, float), 0), now_ns),
        _typed(entry, "seq", int, NO_SEQ),
    )


_PLAIN = frozenset({"n", "u", "v", "t", "seq"})
_NUMBER = (float, int)
_NAMES_OK: set[str] = set()


def _plain_record(entry: dict[str, Any], base: dict[str, Any], now_ns: int) -> _Fields | None:
    """The common record (`n u v t seq` of the usual types) with fewer checks per field:
    the same result as the general path, or None to let the general path decide and
    explain. Most packs are made of nothing else, so this is the hot loop."""
    n, u = entry.get("n", ""), entry.get("u", base["bu"])
    v: Any = entry.get("v")
    t, seq = entry.get("t", 0), entry.get("seq", NO_SEQ)
    if (
        type(n) is not str
        or type(u) is not str
        or type(v) not in _NUMBER
        or type(t) not in _NUMBER
        or type(seq) is not int
    ):
        return None
    name = base["bn"] + n
    if name not in _NAMES_OK:
        if not _NAME.fullmatch(name):
            return None
        if len(_NAMES_OK) > 100_000:
            _NAMES_OK.clear()
        _NAMES_OK.add(name)
    value = float(v) + base["bv"]
    if not math.isfinite(value):
        return None
    return name, u, value, _time_ns(base["bt_ns"], t, now_ns), seq


def _check_version(entry: dict[str, Any]) -> None:
    if "bver" in entry:
        bver = _typed(entry, "bver", int)
        if not 1 <= bver <= SENML_VERSION:
            raise DecodeError("unsupported_version", f"bver={bver}")


def _value(entry: dict[str, Any], bv: float) -> float | str | bool | None:
    present = [k for k in ("v", "vs", "vb", "vd") if k in entry]
    if len(present) > 1:
        raise DecodeError("ambiguous_value", "+".join(present))
    if not present:
        if "s" not in entry:
            raise DecodeError("missing_value", "a record needs v, vs, vb, vd or s")
        return None
    key = present[0]
    if key == "v":
        v = float(_typed(entry, "v", (int, float))) + bv
        if not math.isfinite(v):
            raise DecodeError("non_finite_value", repr(v))
        return v
    other: str | bool = _typed(entry, key, bool if key == "vb" else str)
    return other


def _time_ns(bt_ns: int, t: float, now_ns: int) -> int:
    ns = bt_ns + _ns(t)
    if abs(ns) < RELATIVE_LIMIT_S * 1_000_000_000:  # relative: "now" plus the offset
        ns += now_ns
    return ns


def _ns(seconds: float) -> int:
    if type(seconds) is float and -1e6 < seconds < 1e6:
        return round(seconds * 1e9)  # exact to well under a nanosecond at this size
    if isinstance(seconds, int):
        return seconds * 1_000_000_000  # exact for integer seconds
    if not math.isfinite(seconds) or abs(seconds) > 9.2e9:
        raise DecodeError("invalid_time", repr(seconds))
    whole = math.floor(seconds)  # split first: seconds * 1e9 would round to 256 ns
    return whole * 1_000_000_000 + round((seconds - whole) * 1e9)


_MISSING = object()


def _typed(entry: dict[str, Any], key: str, kind: Any, default: Any = _MISSING) -> Any:
    if key not in entry:
        if default is _MISSING:
            raise DecodeError("missing_field", key)
        return default
    v = entry[key]
    if (isinstance(v, bool) and kind is not bool) or not isinstance(v, kind):
        raise DecodeError("wrong_type", f"{key}={v!r}")
    return v

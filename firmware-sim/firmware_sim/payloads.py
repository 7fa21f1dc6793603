"""Encoders for the payloads devices send (docs/wire-format.md, "Device payloads").

Pure functions from readings to bytes, plus the corruptions a faulty device produces.
Values are written in the shortest form that round-trips a float64, so the agent decodes
exactly the float the device sampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import orjson

from devices.catalog import Protocol


class Sample(NamedTuple):
    metric: str
    value: float
    unit: str
    time_ns: int  # a multiple of 1000: device clocks tick in microseconds
    seq: int


def encode(protocol: Protocol, site: str, device: str, samples: Sequence[Sample]) -> bytes:
    if protocol == "json":
        return json_message(site, device, samples)
    if protocol == "senml":
        return senml_message(site, device, samples)
    if protocol == "line":
        return line_message(site, device, samples)
    return b"".join(frame_line(device, s) for s in samples)


def json_message(site: str, device: str, samples: Sequence[Sample]) -> bytes:
    doc = [
        {
            "site": site,
            "device": device,
            "metric": s.metric,
            "value": _finite_or_none(s.value),
            "unit": s.unit,
            "time": s.time_ns,
            "seq": s.seq,
        }
        for s in samples
    ]
    return _nan_literal(orjson.dumps(doc), b'"value":null', b'"value":NaN', samples)


def senml_message(site: str, device: str, samples: Sequence[Sample]) -> bytes:
    """A pack named `<device>:<metric>`; SenML carries no site (the agent's applies)."""
    base_us = samples[0].time_ns // 1000
    units = {s.unit for s in samples}
    pack: list[dict[str, object]] = []
    for i, s in enumerate(samples):
        rec: dict[str, object] = {"n": s.metric, "v": _finite_or_none(s.value), "seq": s.seq}
        dt_us = s.time_ns // 1000 - base_us
        if dt_us:
            rec["t"] = dt_us / 1e6
        if len(units) > 1:
            rec["u"] = s.unit
        if i == 0:
            rec = {"bn": f"{device}:", "bt": base_us / 1e6, **rec}
            if len(units) == 1:
                rec["bu"] = s.unit
        pack.append(rec)
    return _nan_literal(orjson.dumps(pack), b'"v":null', b'"v":NaN', samples)


def line_message(site: str, device: str, samples: Sequence[Sample]) -> bytes:
    lines = [
        f"{_esc(s.metric, ', ')},site={_esc(site, ',= ')},device={_esc(device, ',= ')},"
        f"unit={_esc(s.unit, ',= ')} value={_float(s.value)},seq={s.seq}i {s.time_ns}"
        for s in samples
    ]
    return ("\n".join(lines) + "\n").encode()


def frame_line(device: str, s: Sample, *, bad_checksum: bool = False) -> bytes:
    time_ms = s.time_ns // 1_000_000
    body = f"GWR,{device},{s.seq},{time_ms},{s.metric},{_float(s.value)},{s.unit}".encode()
    cs = frame_checksum(body) ^ (0x5A if bad_checksum else 0)
    return b"$" + body + b"*%02X\r\n" % cs


def frame_checksum(body: bytes) -> int:
    """NMEA-style: XOR of every byte between `$` and `*`."""
    return int(np.bitwise_xor.reduce(np.frombuffer(body, dtype=np.uint8))) if body else 0


def garbage(rng: np.random.Generator, protocol: Protocol) -> bytes:
    """Line noise: random bytes; on a serial line it still ends with CRLF (one lost line)."""
    n = int(rng.integers(4, 64))
    if protocol == "frame":
        raw = rng.integers(0x20, 0x7F, n, dtype=np.uint8).tobytes()
        return raw.replace(b"$", b"#") + b"\r\n"
    return b"\xff" + rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def truncate(payload: bytes, rng: np.random.Generator, protocol: Protocol) -> bytes:
    """A frame cut short, such that no decoder can take it for a reading: a JSON document
    without its end, a serial frame without its checksum (it keeps its CRLF), a line
    without its fields (any longer prefix of a line may still parse)."""
    body = payload.rstrip(b"\r\n")
    if protocol == "line":
        lo, hi = 1, body.find(b" ")
    elif protocol == "frame":
        lo, hi = 1, body.rfind(b"*")
    else:
        lo, hi = 1, len(body) - 1
    cut = int(rng.integers(lo, max(lo + 1, hi)))
    return body[:cut] + (b"\r\n" if protocol == "frame" else b"")


def _float(v: float) -> str:
    return repr(float(v)) if math.isfinite(v) else "NaN"


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _nan_literal(raw: bytes, null: bytes, nan: bytes, samples: Sequence[Sample]) -> bytes:
    # JSON has no NaN; firmware printf's it anyway, which is what we simulate.
    if all(math.isfinite(s.value) for s in samples):
        return raw
    return raw.replace(null, nan)


def _esc(text: str, chars: str) -> str:
    for c in chars:
        text = text.replace(c, "\\" + c)
    return text

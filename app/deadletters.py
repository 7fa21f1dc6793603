"""Which device and seq a dead letter's raw bytes belong to, for `gateway verify`.

A dead letter is attributed only when its payload is a complete reading in one of the
device payload formats (docs/wire-format.md) that names its device and seq; a payload cut
short or made of noise is not, and is counted by its distinct bytes instead (a message
redelivered by the broker is the same bytes, dead-lettered twice).
"""

from __future__ import annotations

import json
import re
from typing import Any

Attribution = tuple[str, str, int]  # site, device, seq

# $GWR,<device>,<seq>,<time_ms>,<metric>,<value>[,<unit>]*hh, checksum right or wrong
_FRAME = re.compile(
    rb"\$GWR,([A-Za-z0-9_\-]+),(\d+),\d*,[^,*]+,[^,*]*(,[^,*]*)?\*[0-9A-Fa-f]{2}\r?\n?"
)
_URN_DEV = re.compile(r"urn:dev:[a-z]+:")
_LINE = re.compile(r"(\S+) (\S+)( \d+)?")


def attribute(payload: bytes, site: str) -> list[Attribution]:
    """Every (site, device, seq) `payload` carries completely; [] if none. `site` is the
    dead letter's own site, used when the format carries none (SenML, serial frames)."""
    frame = _FRAME.fullmatch(payload)
    if frame:
        return [(site, frame[1].decode(), int(frame[2]))]
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return []
    if text.lstrip().startswith(("[", "{")):
        return _json(text, site)
    return _line_protocol(text)


def _json(text: str, site: str) -> list[Attribution]:
    try:
        doc = json.loads(text)  # the stdlib parser accepts the NaN firmware writes
    except ValueError:
        return []
    items = doc if isinstance(doc, list) else [doc]
    out: list[Attribution] = []
    base = ""
    for item in items:
        if not isinstance(item, dict):
            return []
        if isinstance(item.get("bn"), str):
            base = item["bn"]
        found = _json_reading(item, base, site)
        if found is None:
            return []
        out.append(found)
    return out


def _json_reading(item: dict[str, Any], base: str, site: str) -> Attribution | None:
    seq = item.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    if "device" in item:  # JSON readings
        site, device = item.get("site", site), item["device"]
    else:  # SenML: the resolved name is <device>:<metric> (or /), as the agent splits it
        name = base + str(item.get("n", ""))
        cut = max(name.rfind(":"), name.rfind("/"))
        if cut <= 0:
            return None
        device = _URN_DEV.sub("", name[:cut], count=1)
    if not isinstance(site, str) or not isinstance(device, str):
        return None
    return (site, device, seq)


def _line_protocol(text: str) -> list[Attribution]:
    out: list[Attribution] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.fullmatch(line.strip())
        if not m:
            return []
        tags = dict(kv.split("=", 1) for kv in m[1].split(",")[1:] if "=" in kv)
        fields = dict(kv.split("=", 1) for kv in m[2].split(",") if "=" in kv)
        seq = fields.get("seq", "")
        if "site" not in tags or "device" not in tags or not re.fullmatch(r"\d+i", seq):
            return []
        out.append((tags["site"], tags["device"], int(seq[:-1])))
    return out

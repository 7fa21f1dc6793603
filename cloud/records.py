"""The window record: one JSON object per (window, site, device, metric, window start).

Written by the aggregator to AGG and to the `AGG_LATEST` bucket, read back by the views;
docs/api.md documents every field. `to_json` writes the fields in declaration order, which
is the order of the documented example. `summarised` came later: it has a default, and a
record written before it existed (without it) reads as `summarised = 0`.

Reading, a record from a newer writer may carry fields this version does not know:
`from_json` ignores them by default, so that older views keep working during a rolling
upgrade, and raises with `strict=True` (what the tests use), so an unexpected field fails
loudly there. A missing field or one of the wrong type always raises `RecordError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

import orjson

from gateway import subjects
from gateway.errors import GatewayError

WindowId = tuple[str, str, str, str, int]  # window label, site, device, metric, start_ns


class RecordError(GatewayError, ValueError):
    """Bytes that are not a window record (not JSON, a field missing or of the wrong type)."""


@dataclass(frozen=True, slots=True)
class WindowRecord:
    site: str
    device: str
    metric: str
    unit: str
    window: str  # width label: "10s", "1m", ...
    start_ns: int  # the window [start, end) in event time
    end_ns: int
    count: int
    min: float
    max: float
    sum: float
    mean: float
    stddev: float  # population (ddof 0)
    p50: float
    p95: float
    first: float  # value of the reading with the smallest (event time, seq)
    last: float
    closed: bool  # False for a live view of an open window (KV only)
    # How many of `count` came from edge summaries (`overflow = "downsample"`,
    # cloud/summaries.py). When > 0, stddev, p50 and p95 are those of the raw readings
    # only (approximate; NaN if there are none); the other statistics stay exact.
    summarised: int = 0

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str, *, strict: bool = False) -> WindowRecord:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise RecordError(f"window record is not JSON: {exc}") from None
        return cls.from_doc(doc, strict=strict)

    @classmethod
    def from_doc(cls, doc: object, *, strict: bool = False) -> WindowRecord:
        """From an already parsed JSON object (one element of an API response, say)."""
        if not isinstance(doc, Mapping):
            raise RecordError(f"window record is not a JSON object: {type(doc).__name__}")
        if strict and (unknown := sorted(set(doc) - set(_KINDS))):
            raise RecordError(f"window record has unknown fields {unknown}")
        return cls(**{name: _field(doc, name, kind) for name, kind in _KINDS.items()})

    @property
    def window_id(self) -> WindowId:
        """What identifies the window; a later record with the same id supersedes it."""
        return (self.window, self.site, self.device, self.metric, self.start_ns)

    def subject(self) -> str:
        return subjects.agg(self.window, self.site, self.device, self.metric)

    def latest_key(self) -> str:
        return subjects.latest_key(self.window, self.site, self.device, self.metric)

    def msg_id(self, subject: str | None = None) -> str:
        """`Nats-Msg-Id` in AGG: a window's count grows with each change, so a republished
        record with the same content is dropped as a duplicate. `subject`: this record's
        `subject()`, if the caller has it already."""
        return f"{subject or self.subject()}@{self.start_ns}:{self.count}"


FLOOR_HEADER = "Gateway-Window-Floor"
HIGH_HEADER = "Gateway-Watermark"


@dataclass(frozen=True, slots=True)
class IndexBounds:
    """What the aggregator promises about the order of one series' records in AGG.

    Carried as two headers on each record (event time, ns): every record of the same
    series (and width) *before* it in the stream starts at or before `high_ns` (the
    agent's watermark when it was published), and every record *after* it starts at or
    after `floor_ns` (the oldest window the worker still held or may still open). Both
    only grow along the stream, so a query can bisect the stream by direct gets and stop
    reading once the floor passes its `to` (`cloud/views/query.py`)."""

    floor_ns: int
    high_ns: int

    def to_headers(self) -> dict[str, str]:
        return {FLOOR_HEADER: str(self.floor_ns), HIGH_HEADER: str(self.high_ns)}

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> IndexBounds | None:
        """None for a record without them (written before they existed) or garbled ones."""
        if not headers:
            return None
        try:
            return cls(int(headers[FLOOR_HEADER]), int(headers[HIGH_HEADER]))
        except (KeyError, ValueError):
            return None


_KINDS: dict[str, str] = {f.name: str(f.type) for f in fields(WindowRecord)}
# Fields added after records were first written: absent in older records.
_DEFAULTS: dict[str, object] = {
    f.name: f.default for f in fields(WindowRecord) if f.default is not MISSING
}
_IS: dict[str, Callable[[object], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
}


def _field(doc: Mapping[str, object], name: str, kind: str) -> Any:
    if name not in doc:
        if name in _DEFAULTS:
            return _DEFAULTS[name]
        raise RecordError(f"window record has no {name!r}")
    value = doc[name]
    if kind == "float" and value is None:
        return math.nan  # orjson writes a non-finite float as null
    if not _IS[kind](value):
        raise RecordError(f"window record field {name!r}: {value!r} is not {kind}")
    return value

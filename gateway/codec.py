"""Batch wire format: encode and decode, pure functions (public API).

A batch is columnar: one array per field, plus a small table of series
(device, metric, unit) that each reading points into. The layout is specified in
`docs/wire-format.md`; this module is its reference implementation.

    >>> b = ColumnBuilder(site="s1", agent="a1", batch_id="a1-x-1")
    >>> b.add("dev1", "temp", "Cel", 21.5, 1_700_000_000_000_000_000, 1)
    >>> batch = decode(encode(b.build()))
    >>> batch.value.tolist(), batch.series
    ([21.5], (('dev1', 'temp', 'Cel'),))
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from gateway.errors import CodecError
from gateway.reading import Reading

MAGIC = b"GWB"
VERSION = 1
CONTENT_TYPE = "application/vnd.iot-gateway.batch+columns;version=1"
# A batch that carries summaries (`overflow = "downsample"`): version 2, so a decoder that
# only knows version 1 refuses it instead of reading it as an empty batch.
SUMMARY_VERSION = 2
SUMMARY_CONTENT_TYPE = "application/vnd.iot-gateway.batch+columns;version=2"
_PREFIX = struct.Struct("<3sBI")  # magic, version, header length
# Column order and dtypes on the wire (all little-endian), after the 8-byte-aligned header.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("time_ns", "<i8"),
    ("value", "<f8"),
    ("seq", "<i8"),
    ("series", "<u4"),
    ("flags", "<u2"),
)
_ROW_BYTES = sum(np.dtype(dt).itemsize for _, dt in COLUMNS)
MAX_READINGS = 10_000_000

SeriesKey = tuple[str, str, str]  # device, metric, unit


@dataclass(frozen=True, slots=True)
class Summary:
    """The readings of one series in one window `[start_ns, start_ns + width_s)`, compacted
    on the edge: exact count, min, max, sum, and the first and last readings (by (event
    time, seq)) with their times. `series` indexes the batch's series table."""

    series: int
    start_ns: int
    width_s: int
    count: int
    min: float
    max: float
    sum: float
    first_ns: int
    first: float
    last_ns: int
    last: float

    def as_list(self) -> list[int | float]:
        return [
            self.series,
            self.start_ns,
            self.width_s,
            self.count,
            self.min,
            self.max,
            self.sum,
            self.first_ns,
            self.first,
            self.last_ns,
            self.last,
        ]


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded batch: metadata plus one numpy array per column."""

    site: str
    agent: str
    batch_id: str
    series: tuple[SeriesKey, ...]
    time_ns: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    seq: npt.NDArray[np.int64]
    series_index: npt.NDArray[np.uint32]
    flags: npt.NDArray[np.uint16]
    # row -> the event time a device sent, where validation replaced it (CLOCK_CORRECTED)
    original_time_ns: Mapping[int, int] = field(default_factory=dict)
    summaries: tuple[Summary, ...] = ()  # compacted readings (version 2 only)

    def __len__(self) -> int:
        return int(self.time_ns.shape[0])

    def readings(self) -> Iterator[Reading]:
        """The batch as `Reading`s (slow path, for tools and tests)."""
        for i in range(len(self)):
            device, metric, unit = self.series[int(self.series_index[i])]
            yield Reading(
                site=self.site,
                device=device,
                metric=metric,
                value=float(self.value[i]),
                unit=unit,
                time_ns=int(self.time_ns[i]),
                seq=int(self.seq[i]),
                flags=int(self.flags[i]),
            )


class ColumnBuilder:
    """Collects readings straight into preallocated column arrays (no tuple lists)."""

    def __init__(self, site: str, agent: str, batch_id: str = "", capacity: int = 256) -> None:
        self.site = site
        self.agent = agent
        self.batch_id = batch_id
        self._n = 0
        self._series: dict[SeriesKey, int] = {}
        self._cols = {name: np.empty(capacity, dtype=dt) for name, dt in COLUMNS}
        self._original_time: dict[int, int] = {}

    def __len__(self) -> int:
        return self._n

    def add(
        self,
        device: str,
        metric: str,
        unit: str,
        value: float,
        time_ns: int,
        seq: int,
        flags: int = 0,
        original_time_ns: int | None = None,
    ) -> None:
        if self._n == self._cols["time_ns"].shape[0]:
            self._grow()
        key = (device, metric, unit)
        idx = self._series.get(key)
        if idx is None:
            idx = self._series[key] = len(self._series)
        n = self._n
        cols = self._cols
        cols["time_ns"][n] = time_ns
        cols["value"][n] = value
        cols["seq"][n] = seq
        cols["series"][n] = idx
        cols["flags"][n] = flags
        if original_time_ns is not None:
            self._original_time[n] = original_time_ns
        self._n = n + 1

    def extend(
        self,
        series: SeriesKey,
        time_ns: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        seq: npt.NDArray[np.int64],
        flags: npt.NDArray[np.uint16],
        original_time_ns: Mapping[int, int] | None = None,
    ) -> None:
        """Add many readings of one series at once (rows of `original_time_ns` count from 0
        in these arrays)."""
        k = int(time_ns.shape[0])
        while self._n + k > self._cols["time_ns"].shape[0]:
            self._grow()
        idx = self._series.get(series)
        if idx is None:
            idx = self._series[series] = len(self._series)
        n, cols = self._n, self._cols
        cols["time_ns"][n : n + k] = time_ns
        cols["value"][n : n + k] = value
        cols["seq"][n : n + k] = seq
        cols["series"][n : n + k] = idx
        cols["flags"][n : n + k] = flags
        for row, original in (original_time_ns or {}).items():
            self._original_time[n + row] = original
        self._n = n + k

    def add_reading(self, r: Reading) -> None:
        self.add(r.device, r.metric, r.unit, r.value, r.time_ns, r.seq, int(r.flags))

    def _grow(self) -> None:
        for name, arr in self._cols.items():
            bigger = np.empty(max(16, arr.shape[0] * 2), dtype=arr.dtype)
            bigger[: self._n] = arr[: self._n]
            self._cols[name] = bigger

    def build(self) -> Batch:
        n = self._n
        c = self._cols
        return Batch(
            site=self.site,
            agent=self.agent,
            batch_id=self.batch_id,
            series=tuple(self._series),
            time_ns=c["time_ns"][:n].copy(),
            value=c["value"][:n].copy(),
            seq=c["seq"][:n].copy(),
            series_index=c["series"][:n].copy(),
            flags=c["flags"][:n].copy(),
            original_time_ns=dict(self._original_time),
        )


def encode(batch: Batch) -> bytes:
    """Encode a batch in the columnar wire format: version 1, or 2 when it has summaries."""
    head: dict[str, Any] = {
        "site": batch.site,
        "agent": batch.agent,
        "batch": batch.batch_id,
        "n": len(batch),
        "series": [list(s) for s in batch.series],
    }
    if batch.original_time_ns:  # optional: absent in most batches
        head["original_time_ns"] = sorted([k, v] for k, v in batch.original_time_ns.items())
    if batch.summaries:  # orjson writes floats round-trip exact
        head["summaries"] = [s.as_list() for s in batch.summaries]
    header = orjson.dumps(head)
    pad = (-(_PREFIX.size + len(header))) % 8
    version = SUMMARY_VERSION if batch.summaries else VERSION
    parts = [_PREFIX.pack(MAGIC, version, len(header)), header, b"\0" * pad]
    for name, dtype in COLUMNS:
        parts.append(np.ascontiguousarray(_column(batch, name), dtype=dtype).tobytes())
    return b"".join(parts)


def _column(batch: Batch, name: str) -> npt.NDArray[np.generic]:
    return batch.series_index if name == "series" else getattr(batch, name)


@dataclass(frozen=True, slots=True)
class _Header:
    site: str
    agent: str
    batch_id: str
    n: int
    series: tuple[SeriesKey, ...]
    original_time_ns: dict[int, int]
    summaries: tuple[Summary, ...] = ()


def decode(payload: bytes) -> Batch:
    """Decode a batch, columnar or SenML (told apart by the first byte); raise
    `CodecError` saying what is wrong with it."""
    if payload[:1] == b"[":
        return decode_senml(payload)
    if len(payload) < _PREFIX.size:
        raise CodecError(f"batch too short ({len(payload)} bytes)")
    magic, version, hlen = _PREFIX.unpack_from(payload)
    if magic != MAGIC:
        raise CodecError("not a gateway batch (bad magic)")
    if version not in (VERSION, SUMMARY_VERSION):
        raise CodecError(f"unsupported batch format version {version}")
    header = _decode_header(payload[_PREFIX.size : _PREFIX.size + hlen], hlen, version)
    n = header.n
    offset = _PREFIX.size + hlen + ((-(_PREFIX.size + hlen)) % 8)
    if len(payload) != offset + n * _ROW_BYTES:
        raise CodecError(f"batch length {len(payload)} does not match {n} readings")
    cols: dict[str, Any] = {}
    for name, dtype in COLUMNS:
        arr = np.frombuffer(payload, dtype=np.dtype(dtype), count=n, offset=offset)
        offset += arr.nbytes
        cols[name] = arr.astype(dtype.replace("<", "="), copy=False)
    if n and int(cols["series"].max()) >= len(header.series):
        raise CodecError("series index out of range")
    return Batch(
        site=header.site,
        agent=header.agent,
        batch_id=header.batch_id,
        series=header.series,
        time_ns=cols["time_ns"],
        value=cols["value"],
        seq=cols["seq"],
        series_index=cols["series"],
        flags=cols["flags"],
        original_time_ns=header.original_time_ns,
        summaries=header.summaries,
    )


def _decode_header(raw: bytes, hlen: int, version: int = VERSION) -> _Header:
    if len(raw) != hlen:
        raise CodecError("batch header truncated")
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"batch header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CodecError("batch header is not a JSON object")
    for key, kind in (("site", str), ("agent", str), ("batch", str), ("n", int)):
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise CodecError(f"batch header field {key!r} missing or not {kind.__name__}")
    n = header["n"]
    if not 0 <= n <= MAX_READINGS:
        raise CodecError(f"batch header n={n} out of range")
    series = header.get("series")
    if not isinstance(series, list) or not all(
        isinstance(s, list) and len(s) == 3 and all(isinstance(t, str) for t in s) for s in series
    ):
        raise CodecError("batch header field 'series' must be a list of [device, metric, unit]")
    return _Header(
        site=header["site"],
        agent=header["agent"],
        batch_id=header["batch"],
        n=n,
        series=tuple((s[0], s[1], s[2]) for s in series),
        original_time_ns=_original_times(header.get("original_time_ns", []), n),
        summaries=_summaries(header, len(series)) if version == SUMMARY_VERSION else (),
    )


_SUMMARY_KINDS = (int, int, int, int, float, float, float, int, float, int, float)


def _summaries(header: dict[str, Any], n_series: int) -> tuple[Summary, ...]:
    rows = header.get("summaries")
    if not isinstance(rows, list) or not all(_is_summary(r, n_series) for r in rows):
        raise CodecError(
            "batch header field 'summaries' must be a list of [series, start_ns, width_s,"
            " count, min, max, sum, first_ns, first, last_ns, last]"
        )
    return tuple(_summary(r) for r in rows)


def _summary(r: list[Any]) -> Summary:
    series, start, width, count, lo, hi, total, first_ns, first, last_ns, last = r
    return Summary(
        series,
        start,
        width,
        count,
        float(lo),
        float(hi),
        float(total),
        first_ns,
        float(first),
        last_ns,
        float(last),
    )


def _is_summary(row: Any, n_series: int) -> bool:
    if not isinstance(row, list) or len(row) != len(_SUMMARY_KINDS):
        return False
    for v, kind in zip(row, _SUMMARY_KINDS, strict=True):
        ok = _is_number(v) if kind is float else isinstance(v, int) and not isinstance(v, bool)
        if not ok:
            return False
    return bool(0 <= row[0] < n_series and row[2] > 0 and row[3] > 0)


def _original_times(pairs: Any, n: int) -> dict[int, int]:
    if not isinstance(pairs, list) or not all(
        isinstance(p, list)
        and len(p) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in p)
        and 0 <= p[0] < n
        for p in pairs
    ):
        raise CodecError("batch header field 'original_time_ns' must be [[row, ns], ...]")
    return {p[0]: p[1] for p in pairs}


# -- SenML (RFC 8428) form -----------------------------------------------------------------
SENML_CONTENT_TYPE = "application/senml+json"
_NS = 1_000_000_000


def encode_senml(batch: Batch) -> bytes:
    """The batch as a SenML JSON pack: readable, and decodable by any SenML library.

    The first record carries `bn` = `<site>/`, `bt` = the batch's first whole second, and
    our extension fields `agent` and `batch`; each record has `n` = `<device>/<metric>`,
    `u`, `v`, `t` (seconds after `bt`, exact to the nanosecond), and the extensions `seq`,
    `flags` (when not 0) and `orig_t` (the replaced event time, absolute seconds).
    """
    if batch.summaries:
        raise CodecError("a batch of summaries has no SenML form (columnar version 2 only)")
    n = len(batch)
    bt = int(batch.time_ns.min()) // _NS if n else 0
    names = [(f"{d}/{m}", u) for d, m, u in batch.series]
    records: list[dict[str, Any]] = []
    rel = (batch.time_ns - bt * _NS).tolist()
    values, seqs, flags = batch.value.tolist(), batch.seq.tolist(), batch.flags.tolist()
    idx = batch.series_index.tolist()
    for i in range(n):
        name, unit = names[idx[i]]
        rec: dict[str, Any] = {"n": name, "u": unit, "v": values[i], "t": rel[i] / _NS}
        rec["seq"] = seqs[i]
        if flags[i]:
            rec["flags"] = flags[i]
        if i in batch.original_time_ns:
            rec["orig_t"] = batch.original_time_ns[i] / _NS
        records.append(rec)
    head = {"bn": f"{batch.site}/", "bt": bt, "agent": batch.agent, "batch": batch.batch_id}
    if records:
        records[0] = {**head, **records[0]}
    else:
        records.append({**head, "n": "", "s": 0})  # an empty batch: one sum-only record
    return orjson.dumps(records)


def decode_senml(payload: bytes) -> Batch:
    """Decode a SenML batch as written by `encode_senml` (base fields may change midway)."""
    try:
        pack = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"SenML batch is not JSON: {exc}") from None
    if not isinstance(pack, list) or not pack or not isinstance(pack[0], dict):
        raise CodecError("SenML batch must be a non-empty JSON array of objects")
    first = pack[0]
    bn = _senml_str(first, "bn")
    if not bn.endswith("/"):
        raise CodecError("SenML batch: bn must be '<site>/'")
    builder = ColumnBuilder(
        bn[:-1], _senml_str(first, "agent"), _senml_str(first, "batch"), len(pack)
    )
    bt = 0
    for rec in pack:
        if not isinstance(rec, dict):
            raise CodecError("SenML batch: every record must be an object")
        if "bn" in rec and _senml_str(rec, "bn") != bn:
            raise CodecError("SenML batch: one site per batch")
        if "bt" in rec:
            bt = _senml_int(rec, "bt")
        if "v" not in rec:
            continue  # the sum-only record of an empty batch
        _senml_record(builder, rec, bt)
    return builder.build()


def _senml_record(builder: ColumnBuilder, rec: dict[str, Any], bt: int) -> None:
    device, sep, metric = _senml_str(rec, "n").partition("/")
    if not sep:
        raise CodecError(f"SenML batch: name {rec['n']!r} is not <device>/<metric>")
    value: Any = rec.get("v")
    t: Any = rec.get("t", 0)
    if not _is_number(value) or not _is_number(t):
        raise CodecError("SenML batch: v and t must be numbers")
    orig = rec.get("orig_t")
    if orig is not None and not _is_number(orig):
        raise CodecError("SenML batch: orig_t must be a number")
    builder.add(
        device,
        metric,
        _senml_str(rec, "u"),
        float(value),
        bt * _NS + round(t * _NS),
        _senml_int(rec, "seq"),
        _senml_int(rec, "flags", 0),
        None if orig is None else round(orig * _NS),
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _senml_str(rec: dict[str, Any], key: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str):
        raise CodecError(f"SenML batch: {key!r} missing or not a string")
    return v


def _senml_int(rec: dict[str, Any], key: str, default: int | None = None) -> int:
    v = rec.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise CodecError(f"SenML batch: {key!r} missing or not an integer")
    return v

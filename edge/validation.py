"""Validation of decoded readings against the device catalog and the clock.

Decoders already guarantee types, finite values and subject-safe names; this stage adds
what needs knowledge outside the payload:

- units and ranges per (device type, metric): a device bound to a type by pattern
  (`[[validation.types]]`) is checked against that type (`devices/catalog.toml` or
  `devices/types.toml`); any other device against the widest range any catalog type gives
  its metric. A missing unit is filled in; a different unit is converted where the pair
  is known (degF/Cel, mV/V, Wh/kWh, hPa/Pa: `devices/units.py`), else rejected
  (`unit_mismatch`); a value outside [min, max] is rejected (`out_of_range`) or flagged;
- clock sanity: an event time too far in the future, before `device_time_floor` (a clock
  never set) or, if `max_past_s` is set, older than that, is replaced by the receive
  time and flagged `CLOCK_CORRECTED`, the original kept beside it in the batch; a plausible
  device time is kept, however old. While the
  agent's own clock is not yet synchronised (a Pi has no battery clock) readings are
  flagged `CLOCK_UNSYNCED` and their times are left alone, since there is nothing better.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from devices.catalog import Catalog, ValidationTypes, load_validation_types
from devices.units import conversion
from edge.decoders.context import SeriesColumns
from edge.errors import DecodeError
from gateway.config import ValidationSettings
from gateway.errors import ConfigError
from gateway.reading import Quality, Reading

_NS = 1_000_000_000
_BINDINGS_MAX = 100_000  # device -> type, remembered


@dataclass(frozen=True, slots=True)
class MetricRule:
    units: frozenset[str]
    unit: str  # the unit filled in when a reading has none
    min: float
    max: float


def metric_rules(catalog: Catalog) -> dict[str, MetricRule]:
    """metric name -> allowed units and the widest range any device type gives it."""
    rules: dict[str, MetricRule] = {}
    for dtype in catalog.types.values():
        for name, spec in dtype.metrics.items():
            old = rules.get(name)
            if old is None:
                rules[name] = MetricRule(frozenset({spec.unit}), spec.unit, spec.min, spec.max)
            else:
                lo, hi = min(old.min, spec.min), max(old.max, spec.max)
                rules[name] = MetricRule(old.units | {spec.unit}, old.unit, lo, hi)
    return rules


def type_rules(catalog: Catalog, types: ValidationTypes) -> dict[str, dict[str, MetricRule]]:
    """type name -> metric -> its unit and range, from both the catalog and `types.toml`."""
    out: dict[str, dict[str, MetricRule]] = {}
    for name, dtype in catalog.types.items():
        out[name] = {
            m: MetricRule(frozenset({s.unit}), s.unit, s.min, s.max)
            for m, s in dtype.metrics.items()
        }
    for name, vtype in types.types.items():
        out[name] = {
            m: MetricRule(frozenset({s.unit}), s.unit, s.min, s.max)
            for m, s in vtype.metrics.items()
        }
    return out


@dataclass(frozen=True, slots=True)
class Checked:
    reading: Reading
    original_time_ns: int | None = None  # set when the event time was replaced


@dataclass(frozen=True, slots=True)
class SeriesCheck:
    """`Validator.check` for a column of readings: which pass, with what flags and times."""

    accepted: npt.NDArray[np.bool_]
    unit: str
    flags: npt.NDArray[np.uint16]
    time_ns: npt.NDArray[np.int64]
    original_time_ns: dict[int, int]  # row (in the accepted rows) -> replaced event time
    rejects: list[tuple[int, str, str]]  # row, reason, detail


class ClockState:
    """Whether the agent's wall clock can be trusted yet."""

    def __init__(self, floor_ns: int, sync_file: Path | None) -> None:
        self.floor_ns = floor_ns
        self.sync_file = sync_file
        self._synced = False

    def synced(self, now_ns: int) -> bool:
        if not self._synced:  # once synchronised, it stays so: no stat() per reading
            file_ok = self.sync_file is None or self.sync_file.exists()
            self._synced = now_ns >= self.floor_ns and file_ok
        return self._synced


def floor_ns(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * _NS


class Validator:
    def __init__(
        self, catalog: Catalog, settings: ValidationSettings, types: ValidationTypes | None = None
    ) -> None:
        self.settings = settings
        self.rules = metric_rules(catalog)
        self.type_rules = type_rules(catalog, load_validation_types() if types is None else types)
        for b in settings.types:
            if b.type not in self.type_rules:
                known = ", ".join(sorted(self.type_rules))
                raise ConfigError(f"validation.types: unknown type {b.type!r} (known: {known})")
        self._bound: dict[str, dict[str, MetricRule] | None] = {}
        self.clock = ClockState(floor_ns(settings.clock_floor), settings.clock_sync_file)
        self._future_ns = int(settings.max_future_s * _NS)
        self._past_ns = None if settings.max_past_s is None else int(settings.max_past_s * _NS)
        self._floor_ns = floor_ns(settings.device_time_floor)

    def _rules_of(self, device: str) -> dict[str, MetricRule]:
        """The rules of the type `device` is bound to, else the catalog-wide ones."""
        if not self.settings.types:
            return self.rules
        if device in self._bound:
            found = self._bound[device]
        else:
            found = next(
                (
                    self.type_rules[b.type]
                    for b in self.settings.types
                    if any(fnmatch.fnmatchcase(device, g) for g in b.devices)
                ),
                None,
            )
            if len(self._bound) >= _BINDINGS_MAX:
                self._bound.clear()
            self._bound[device] = found
        return self.rules if found is None else found

    def _plausible(self, received_ns: int) -> tuple[int, int]:
        """The range of event times kept as they are."""
        lo = self._floor_ns
        if self._past_ns is not None:
            lo = max(lo, received_ns - self._past_ns)
        return lo, received_ns + self._future_ns

    def check(self, r: Reading, received_ns: int) -> Checked:
        """The reading as accepted (maybe flagged, converted or corrected), or `DecodeError`."""
        flags = r.flags
        unit, value = r.unit, r.value
        rule = self._rules_of(r.device).get(r.metric)
        if rule is None:
            if self.settings.unknown_metrics == "reject":
                raise DecodeError("unknown_metric", r.metric)
        else:
            if not unit:
                unit = rule.unit
            elif unit not in rule.units:
                convert = conversion(unit, rule.unit)
                if convert is None:
                    raise DecodeError("unit_mismatch", f"{r.metric} in {unit!r}, not {rule.unit!r}")
                unit, value = rule.unit, convert(value)
            if not rule.min <= value <= rule.max:
                if self.settings.out_of_range == "reject":
                    raise DecodeError(
                        "out_of_range", f"{r.metric}={value} not in [{rule.min}, {rule.max}]"
                    )
                flags |= Quality.OUT_OF_RANGE
        time_ns, original = r.time_ns, None
        if not self.clock.synced(received_ns):
            flags |= Quality.CLOCK_UNSYNCED
        else:
            lo, hi = self._plausible(received_ns)
            if not lo <= time_ns <= hi:
                time_ns, original = received_ns, time_ns
                flags |= Quality.CLOCK_CORRECTED
        if flags == r.flags and unit == r.unit and value == r.value and original is None:
            return Checked(r)
        changed = replace(r, unit=unit, value=value, flags=int(flags), time_ns=time_ns)
        return Checked(changed, original)

    def check_series(self, cols: SeriesColumns, received_ns: int) -> SeriesCheck:
        """The same rules as `check`, applied to a whole column with numpy. A converted
        column's values are written back into `cols.value` (the batcher reads them there)."""
        n = len(cols)
        flags = np.zeros(n, dtype=np.uint16)
        accepted = np.ones(n, dtype=np.bool_)
        rejects: list[tuple[int, str, str]] = []
        unit = cols.unit
        rule = self._rules_of(cols.device).get(cols.metric)
        if rule is None:
            if self.settings.unknown_metrics == "reject":
                return _all_rejected(cols, unit, "unknown_metric", cols.metric)
        else:
            if not unit:
                unit = rule.unit
            elif unit not in rule.units:
                convert = conversion(unit, rule.unit)
                if convert is None:
                    detail = f"{cols.metric} in {unit!r}, not {rule.unit!r}"
                    return _all_rejected(cols, unit, "unit_mismatch", detail)
                unit = rule.unit
                cols.value[:] = cols.value * convert.scale + convert.offset
            outside = (cols.value < rule.min) | (cols.value > rule.max)
            if outside.any():
                if self.settings.out_of_range == "reject":
                    accepted &= ~outside
                    for i in np.flatnonzero(outside).tolist():
                        detail = f"{cols.metric}={cols.value[i]} not in [{rule.min}, {rule.max}]"
                        rejects.append((i, "out_of_range", detail))
                else:
                    flags[outside] |= np.uint16(Quality.OUT_OF_RANGE)
        time_ns, original = cols.time_ns, {}
        if not self.clock.synced(received_ns):
            flags |= np.uint16(Quality.CLOCK_UNSYNCED)
        else:
            lo, hi = self._plausible(received_ns)
            skewed = (time_ns < lo) | (time_ns > hi)
            if skewed.any():
                kept_row = np.cumsum(accepted) - 1  # row numbers among the accepted
                for i in np.flatnonzero(skewed & accepted).tolist():
                    original[int(kept_row[i])] = int(time_ns[i])
                time_ns = np.where(skewed, received_ns, time_ns)
                flags[skewed] |= np.uint16(Quality.CLOCK_CORRECTED)
        return SeriesCheck(accepted, unit, flags[accepted], time_ns[accepted], original, rejects)


def _all_rejected(cols: SeriesColumns, unit: str, reason: str, detail: str) -> SeriesCheck:
    n = len(cols)
    return SeriesCheck(
        np.zeros(n, dtype=np.bool_),
        unit,
        np.zeros(0, dtype=np.uint16),
        np.zeros(0, dtype=np.int64),
        {},
        [(i, reason, detail) for i in range(n)],
    )

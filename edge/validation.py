"""Validation of decoded readings against the device catalog and the clock.

Decoders already guarantee types, finite values and subject-safe names; this stage adds
what needs knowledge outside the payload:

- units and ranges per metric, from the device catalog (`devices/catalog.toml`): a missing
  unit is filled in from the catalog, a different one is rejected (`unit_mismatch`); a
  value outside [min, max] is rejected (`out_of_range`) or, if configured, flagged;
- clock sanity: an event time too far in the future or past is replaced by the receive
  time and flagged `CLOCK_CORRECTED`, the original kept beside it in the batch; while the
  agent's own clock is not yet synchronised (a Pi has no battery clock) readings are
  flagged `CLOCK_UNSYNCED` and their times are left alone, since there is nothing better.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from devices.catalog import Catalog
from edge.decoders.context import SeriesColumns
from edge.errors import DecodeError
from gateway.config import ValidationSettings
from gateway.reading import Quality, Reading

_NS = 1_000_000_000


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
    def __init__(self, catalog: Catalog, settings: ValidationSettings) -> None:
        self.settings = settings
        self.rules = metric_rules(catalog)
        self.clock = ClockState(floor_ns(settings.clock_floor), settings.clock_sync_file)
        self._future_ns = int(settings.max_future_s * _NS)
        self._past_ns = int(settings.max_past_s * _NS)

    def check(self, r: Reading, received_ns: int) -> Checked:
        """The reading as accepted (maybe flagged or corrected), or `DecodeError`."""
        flags = r.flags
        unit = r.unit
        rule = self.rules.get(r.metric)
        if rule is None:
            if self.settings.unknown_metrics == "reject":
                raise DecodeError("unknown_metric", r.metric)
        else:
            if not unit:
                unit = rule.unit
            elif unit not in rule.units:
                raise DecodeError("unit_mismatch", f"{r.metric} in {unit!r}, not {rule.unit!r}")
            if not rule.min <= r.value <= rule.max:
                if self.settings.out_of_range == "reject":
                    raise DecodeError(
                        "out_of_range", f"{r.metric}={r.value} not in [{rule.min}, {rule.max}]"
                    )
                flags |= Quality.OUT_OF_RANGE
        time_ns, original = r.time_ns, None
        if not self.clock.synced(received_ns):
            flags |= Quality.CLOCK_UNSYNCED
        elif not received_ns - self._past_ns <= time_ns <= received_ns + self._future_ns:
            time_ns, original = received_ns, time_ns
            flags |= Quality.CLOCK_CORRECTED
        if flags == r.flags and unit == r.unit and original is None:
            return Checked(r)
        return Checked(replace(r, unit=unit, flags=int(flags), time_ns=time_ns), original)

    def check_series(self, cols: SeriesColumns, received_ns: int) -> SeriesCheck:
        """The same rules as `check`, applied to a whole column with numpy."""
        n = len(cols)
        flags = np.zeros(n, dtype=np.uint16)
        accepted = np.ones(n, dtype=np.bool_)
        rejects: list[tuple[int, str, str]] = []
        unit = cols.unit
        rule = self.rules.get(cols.metric)
        if rule is None:
            if self.settings.unknown_metrics == "reject":
                return _all_rejected(cols, unit, "unknown_metric", cols.metric)
        else:
            if not unit:
                unit = rule.unit
            elif unit not in rule.units:
                detail = f"{cols.metric} in {unit!r}, not {rule.unit!r}"
                return _all_rejected(cols, unit, "unit_mismatch", detail)
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
            skewed = (time_ns < received_ns - self._past_ns) | (
                time_ns > received_ns + self._future_ns
            )
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

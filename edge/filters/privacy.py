"""Privacy rules of one source: drop devices or metrics by pattern, and coarsen values
(GPS latitude and longitude to 2 decimals is about 1 km), before a reading is validated,
batched or stored. Drops are counted like any other filter's, as `privacy`.

The intake applies it right after decoding, on both paths: reading by reading (`apply`)
and to a pack's columns (`apply_series`). Both round half to even; numpy's scaled
rounding may differ from Python's correctly rounded `round` in the last bit of a value
exactly between two steps, which is far below any coarsening worth asking for.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from edge.decoders.context import SeriesColumns
from gateway.config import PrivacySettings
from gateway.reading import Reading

_CACHE_MAX = 10_000  # names remembered per kind; cleared when full (device names are unbounded)


def _matcher(globs: list[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None


@dataclass(frozen=True, slots=True)
class _Rule:
    """What happens to one (device, metric): dropped, or rounded to `decimals` (None: kept)."""

    drop: bool
    decimals: int | None


_KEEP = _Rule(False, None)
_DROP = _Rule(True, None)


class Privacy:
    name = "privacy"

    def __init__(self, settings: PrivacySettings) -> None:
        self.settings = settings
        self.withhold_dead_letters = settings.dead_letter_payload == "withhold"
        self._devices = _matcher(settings.drop_devices)
        self._metrics = _matcher(settings.drop_metrics)
        self._round = [(re.compile(fnmatch.translate(g)), d) for g, d in settings.round.items()]
        self._device_dropped: dict[str, bool] = {}
        self._metric_rule: dict[str, _Rule] = {}
        self.dropped: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, s: PrivacySettings) -> Privacy:
        return cls(s)

    def _rule(self, device: str, metric: str) -> _Rule:
        dropped = self._device_dropped.get(device)
        if dropped is None:
            if len(self._device_dropped) >= _CACHE_MAX:
                self._device_dropped.clear()
            dropped = bool(self._devices and self._devices.match(device))
            self._device_dropped[device] = dropped
        if dropped:
            return _DROP
        rule = self._metric_rule.get(metric)
        if rule is None:
            if len(self._metric_rule) >= _CACHE_MAX:
                self._metric_rule.clear()
            rule = self._metric_rule[metric] = self._for_metric(metric)
        return rule

    def _for_metric(self, metric: str) -> _Rule:
        if self._metrics and self._metrics.match(metric):
            return _DROP
        for pattern, decimals in self._round:  # the first pattern that matches, as written
            if pattern.match(metric):
                return _Rule(False, decimals)
        return _KEEP

    def apply(self, r: Reading) -> Reading | None:
        rule = self._rule(r.device, r.metric)
        if rule.drop:
            self.dropped[self.name] += 1
            return None
        if rule.decimals is None:
            return r
        return replace(r, value=round(r.value, rule.decimals))

    def apply_series(self, cols: SeriesColumns) -> SeriesColumns | None:
        rule = self._rule(cols.device, cols.metric)
        if rule.drop:
            self.dropped[self.name] += len(cols)
            return None
        if rule.decimals is None:
            return cols
        return replace(cols, value=np.round(cols.value, rule.decimals))

"""Outlier flag: robust z-score of a value against the last `window` values of its series,
z = 0.6745 * (x - median) / MAD (Iglewicz and Hoaglin); |z| > threshold flags OUTLIER
(or drops the reading when `drop` is set). Every value enters the window, flagged or
not, so a lasting level shift becomes the new normal instead of an endless outlier."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt

from edge.filters.base import SeriesKey
from gateway.config import OutlierSettings
from gateway.reading import Quality, Reading


class _Ring:
    def __init__(self, size: int) -> None:
        self.values: npt.NDArray[np.float64] = np.empty(size, dtype=np.float64)
        self.n = 0

    def add(self, v: float) -> None:
        self.values[self.n % self.values.shape[0]] = v
        self.n += 1

    def view(self) -> npt.NDArray[np.float64]:
        return self.values[: min(self.n, self.values.shape[0])]


def robust_z(x: float, window: npt.NDArray[np.float64]) -> float:
    med = float(np.median(window))
    mad = float(np.median(np.abs(window - med)))
    if mad == 0.0:
        return 0.0 if x == med else float("inf")
    return 0.6745 * (x - med) / mad


class Outlier:
    name = "outlier"

    def __init__(self, window: int, threshold: float, min_samples: int, drop: bool) -> None:
        self.window = window
        self.threshold = threshold
        self.min_samples = min_samples
        self.drop = drop
        self._rings: dict[SeriesKey, _Ring] = {}

    @classmethod
    def from_settings(cls, s: OutlierSettings) -> Outlier:
        return cls(s.window, s.threshold, s.min_samples, s.drop)

    def apply(self, r: Reading) -> Reading | None:
        ring = self._rings.get((r.site, r.device, r.metric))
        if ring is None:
            ring = self._rings[(r.site, r.device, r.metric)] = _Ring(self.window)
        outlier = (
            ring.n >= self.min_samples and abs(robust_z(r.value, ring.view())) > self.threshold
        )
        ring.add(r.value)
        if not outlier:
            return r
        return None if self.drop else replace(r, flags=int(r.flags | Quality.OUTLIER))

"""Downsample: at most `max_rate_hz` readings per series, by event time."""

from __future__ import annotations

from edge.filters.base import SeriesKey
from gateway.config import DownsampleSettings
from gateway.reading import Reading


class Downsample:
    name = "downsample"

    def __init__(self, max_rate_hz: float) -> None:
        self.min_gap_ns = int(1e9 / max_rate_hz)
        self._last: dict[SeriesKey, int] = {}

    @classmethod
    def from_settings(cls, s: DownsampleSettings) -> Downsample:
        return cls(s.max_rate_hz)

    def apply(self, r: Reading) -> Reading | None:
        key = (r.site, r.device, r.metric)
        last = self._last.get(key)
        if last is not None and 0 <= r.time_ns - last < self.min_gap_ns:
            return None
        self._last[key] = r.time_ns
        return r

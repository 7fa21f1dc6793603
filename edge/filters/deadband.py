"""Deadband: pass a reading only when it moved enough since the last one passed, and
always once every `heartbeat_s` (flagged HEARTBEAT) so a flat signal stays visibly alive."""

from __future__ import annotations

from dataclasses import replace

from edge.filters.base import SeriesKey
from gateway.config import DeadbandSettings
from gateway.reading import Quality, Reading

_NS = 1_000_000_000


class Deadband:
    name = "deadband"

    def __init__(self, absolute: float | None, percent: float | None, heartbeat_s: float) -> None:
        if (absolute is None) == (percent is None):
            raise ValueError("deadband needs exactly one of absolute and percent")
        self.absolute = absolute
        self.percent = percent
        self.heartbeat_ns = int(heartbeat_s * _NS)
        self._last: dict[SeriesKey, tuple[float, int]] = {}  # value, time passed

    @classmethod
    def from_settings(cls, s: DeadbandSettings) -> Deadband:
        return cls(s.absolute, s.percent, s.heartbeat_s)

    def _moved(self, value: float, last: float) -> bool:
        if self.absolute is not None:
            return abs(value - last) >= self.absolute
        assert self.percent is not None
        return abs(value - last) >= abs(last) * self.percent / 100

    def apply(self, r: Reading) -> Reading | None:
        key = (r.site, r.device, r.metric)
        last = self._last.get(key)
        if last is None or self._moved(r.value, last[0]):
            self._last[key] = (r.value, r.time_ns)
            return r
        if r.time_ns - last[1] >= self.heartbeat_ns:
            self._last[key] = (last[0], r.time_ns)  # the band stays around the last change
            return replace(r, flags=int(r.flags | Quality.HEARTBEAT))
        return None

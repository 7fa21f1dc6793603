"""Duplicate suppression by (device, seq): drops a reading whose sequence number was seen
among the last `window` of its series. Catches a device's retries even out of order,
which the buffer's high-water mark (which drops only seq <= the highest) does not
distinguish from late readings. Readings without a seq always pass."""

from __future__ import annotations

from collections import OrderedDict

from edge.decoders.context import NO_SEQ
from edge.filters.base import SeriesKey
from gateway.config import DedupeSettings
from gateway.reading import Reading


class Dedupe:
    name = "dedupe"

    def __init__(self, window: int) -> None:
        self.window = window
        self._seen: dict[SeriesKey, OrderedDict[int, None]] = {}

    @classmethod
    def from_settings(cls, s: DedupeSettings) -> Dedupe:
        return cls(s.window)

    def apply(self, r: Reading) -> Reading | None:
        if r.seq == NO_SEQ:
            return r
        seen = self._seen.setdefault((r.site, r.device, r.metric), OrderedDict())
        if r.seq in seen:
            return None
        seen[r.seq] = None
        if len(seen) > self.window:
            seen.popitem(last=False)
        return r

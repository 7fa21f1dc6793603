"""The filter contract and the chain that applies the configured filters in order."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from gateway.reading import Reading

SeriesKey = tuple[str, str, str]  # site, device, metric


class Filter(Protocol):
    name: str

    def apply(self, r: Reading) -> Reading | None:
        """The reading to pass on (maybe flagged), or None to drop it."""
        ...


class FilterChain:
    """Applies each filter whose metric list matches, in config order; counts drops."""

    def __init__(self, filters: Sequence[tuple[Filter, frozenset[str]]]) -> None:
        self._filters = list(filters)
        self.dropped: Counter[str] = Counter()
        self._plan: dict[str, list[Filter]] = {}  # metric -> its filters, built on first use

    def __bool__(self) -> bool:
        return bool(self._filters)

    def _for(self, metric: str) -> list[Filter]:
        plan = self._plan.get(metric)
        if plan is None:
            plan = [f for f, metrics in self._filters if "*" in metrics or metric in metrics]
            self._plan[metric] = plan
        return plan

    def apply(self, r: Reading) -> Reading | None:
        out: Reading | None = r
        for f in self._for(r.metric):
            out = f.apply(r)
            if out is None:
                self.dropped[f.name] += 1
                return None
            r = out
        return out

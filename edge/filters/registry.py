"""Every filter the agent can run, by its settings type: the one place a new filter is
registered (beside its own module and its settings model in `gateway.config`). Privacy
rules are a source's own (`[sources.privacy]`), built by `build_privacy`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from edge.filters.base import Filter, FilterChain
from edge.filters.deadband import Deadband
from edge.filters.dedupe import Dedupe
from edge.filters.downsample import Downsample
from edge.filters.outlier import Outlier
from edge.filters.privacy import Privacy
from gateway.config import (
    DeadbandSettings,
    DedupeSettings,
    DownsampleSettings,
    FilterSettings,
    OutlierSettings,
    PrivacySettings,
)

# settings type -> the filter it configures
FILTERS: dict[type[Any], Callable[[Any], Filter]] = {
    DeadbandSettings: Deadband.from_settings,
    DownsampleSettings: Downsample.from_settings,
    DedupeSettings: Dedupe.from_settings,
    OutlierSettings: Outlier.from_settings,
}


def build_privacy(settings: PrivacySettings | None) -> Privacy | None:
    """A source's privacy rules, or None when it has none."""
    return None if settings is None else Privacy.from_settings(settings)


def build_chain(settings: Sequence[FilterSettings]) -> FilterChain:
    """The configured filters, in config order."""
    return FilterChain([(FILTERS[type(s)](s), frozenset(s.metrics)) for s in settings])

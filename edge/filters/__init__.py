"""Filters: per-metric stages between validation and batching that cut volume or flag.

A filter sees one reading at a time and returns it (maybe with a quality flag added) or
`None` to drop it. State is kept per series (site, device, metric). Times are the
readings' event times, so a backlog delivered in a burst after an outage is filtered as
it was sampled, not by when it arrived.
"""

from edge.filters.base import Filter, FilterChain
from edge.filters.deadband import Deadband
from edge.filters.dedupe import Dedupe
from edge.filters.downsample import Downsample
from edge.filters.outlier import Outlier
from edge.filters.privacy import Privacy
from edge.filters.registry import build_chain, build_privacy

__all__ = [
    "Deadband",
    "Dedupe",
    "Downsample",
    "Filter",
    "FilterChain",
    "Outlier",
    "Privacy",
    "build_chain",
    "build_privacy",
]

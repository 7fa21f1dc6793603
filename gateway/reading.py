"""The unit of data: one sensor reading."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag


class Quality(IntFlag):
    """Quality flags carried with every reading (a bit set on the wire, `uint16`)."""

    OK = 0
    CLOCK_CORRECTED = 1  # event time replaced by receive time; original kept elsewhere
    CLOCK_UNSYNCED = 2  # stamped before the device/agent clock was synchronised
    OUT_OF_RANGE = 4  # outside the catalog range for its metric
    OUTLIER = 8  # flagged by the outlier filter
    HEARTBEAT = 16  # passed by a deadband filter only as its periodic heartbeat


@dataclass(frozen=True, slots=True)
class Reading:
    site: str
    device: str
    metric: str
    value: float
    unit: str
    time_ns: int  # event time, nanoseconds since the Unix epoch
    seq: int  # per-device sequence number, increasing
    flags: int = Quality.OK

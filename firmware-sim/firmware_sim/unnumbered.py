"""How the ground truth names a reading whose format carries no sequence number (Tasmota,
Zigbee2MQTT, Shelly, Sparkplug B metrics): by its metric, event time and value, mixed into
a 62-bit number that stands in for the seq. The simulator records it for what it sent;
`gateway verify` computes it for each stored reading whose seq is -1. Two readings of one
device get the same number only if metric, time and value are all equal, and then they are
the same reading."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import numpy.typing as npt

_MASK64 = (1 << 64) - 1
_MASK62 = (1 << 62) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")


def _metric_key(metric: str) -> int:
    return int.from_bytes(hashlib.blake2b(metric.encode(), digest_size=8).digest(), "little")


def unnumbered_seq(metric: str, time_ns: int, value: float) -> int:
    bits: int = _U64.unpack(_F64.pack(value))[0]
    x = (_metric_key(metric) ^ ((time_ns * _GOLDEN) & _MASK64) ^ bits) & _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return (x ^ (x >> 31)) & _MASK62


def unnumbered_seqs(
    metric: str, time_ns: npt.NDArray[np.int64], value: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """`unnumbered_seq` of one series' readings at once."""
    with np.errstate(over="ignore"):
        x = np.uint64(_metric_key(metric)) ^ (time_ns.astype(np.uint64) * np.uint64(_GOLDEN))
        x = x ^ value.view(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(_M1)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(_M2)
        x = x ^ (x >> np.uint64(31))
    return (x & np.uint64(_MASK62)).astype(np.int64)

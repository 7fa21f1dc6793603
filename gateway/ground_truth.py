"""What a fleet emitted, per device, in a compact form `gateway verify` compares with.

Per device: count, first and last seq, and an order-independent digest of (seq, value)
pairs, so altered values are caught without keeping every reading.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

_MASK = (1 << 64) - 1


def reading_digest(seq: npt.NDArray[np.int64], value: npt.NDArray[np.float64]) -> int:
    """Sum (mod 2^64) of a splitmix64 mix of each (seq, value bits): order-independent."""
    x = seq.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ value.view(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return int(x.sum(dtype=np.uint64)) & _MASK


@dataclass(slots=True)
class DeviceTruth:
    site: str
    device: str
    count: int = 0
    first_seq: int = 0
    last_seq: int = 0
    digest: int = 0

    def record(self, seq: int, value: float) -> None:
        if self.count == 0:
            self.first_seq = seq
        self.count += 1
        self.last_seq = seq
        d = reading_digest(np.array([seq], dtype=np.int64), np.array([value], dtype=np.float64))
        self.digest = (self.digest + d) & _MASK


@dataclass(slots=True)
class GroundTruth:
    devices: dict[tuple[str, str], DeviceTruth]

    @classmethod
    def empty(cls) -> GroundTruth:
        return cls({})

    def device(self, site: str, device: str) -> DeviceTruth:
        key = (site, device)
        truth = self.devices.get(key)
        if truth is None:
            truth = self.devices[key] = DeviceTruth(site, device)
        return truth

    @property
    def emitted(self) -> int:
        return sum(d.count for d in self.devices.values())

    def save(self, path: Path) -> None:
        rows = [asdict(d) for d in self.devices.values()]
        Path(path).write_bytes(orjson.dumps({"version": 1, "devices": rows}))

    @classmethod
    def load(cls, path: Path) -> GroundTruth:
        doc = orjson.loads(Path(path).read_bytes())
        devices = {(r["site"], r["device"]): DeviceTruth(**r) for r in doc["devices"]}
        return cls(devices)

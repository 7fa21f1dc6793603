"""What a fleet emitted, per device, in a compact form `gateway verify` compares with.

Per device: the count, first and last seq, and an order-independent digest of the
(seq, value) pairs of every valid reading the device delivered (to the broker's PUBACK, or
onto the serial line), so altered values are caught without keeping every reading; plus
the readings it made invalid on purpose (seq and kind), and a digest of every message it
sent that names no reading a dead letter could be matched by (garbage, frames cut short).

File format (JSON), version 2:

    {"version": 2, "devices": [
      {"site": "s1", "device": "th-00001", "count": 118, "first_seq": 1, "last_seq": 120,
       "digest": 1234567890123, "invalid": [[7, "nan"], [55, "truncated"]],
       "noise": ["9f2c61d04ab7e311", "03be44a1c2d9f870"]}]}

`digest` is the sum mod 2^64 of splitmix64(seq * 0x9E3779B97F4A7C15 ^ bits(value)) over the
valid readings. Invalid kinds: `nan`, `out_of_range`, `bad_checksum` (the dead letter still
names the device and seq), `truncated` (it does not: its payload is in `noise`). `noise`
holds `payload_digest()` of each such message: BLAKE2b (8 bytes, hex) of its bytes
without trailing CR/LF. Version 1 files (no
`invalid`, `noise`) load too.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")

# Dead letters of these kinds still carry the device and seq they belong to.
ATTRIBUTABLE = frozenset({"nan", "out_of_range", "bad_checksum"})
INVALID_KINDS = ATTRIBUTABLE | {"truncated"}


def reading_digest(seq: npt.NDArray[np.int64], value: npt.NDArray[np.float64]) -> int:
    """Sum (mod 2^64) of a splitmix64 mix of each (seq, value bits): order-independent."""
    x = seq.astype(np.uint64) * np.uint64(_GOLDEN) ^ value.view(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(_M1)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(_M2)
        x = x ^ (x >> np.uint64(31))
    return int(x.sum(dtype=np.uint64)) & _MASK


def one_digest(seq: int, value: float) -> int:
    """`reading_digest` of one reading, in plain Python (10x faster than numpy for one)."""
    bits: int = _U64.unpack(_F64.pack(value))[0]
    x = ((seq * _GOLDEN) & _MASK) ^ bits
    x = ((x ^ (x >> 30)) * _M1) & _MASK
    x = ((x ^ (x >> 27)) * _M2) & _MASK
    return x ^ (x >> 31)


def payload_digest(payload: bytes) -> str:
    """How the ground truth names a message that carries no reading (garbage, truncated).
    Line endings don't count: a serial source may keep them in its dead letter or not."""
    return hashlib.blake2b(payload.rstrip(b"\r\n"), digest_size=8).hexdigest()


@dataclass(slots=True)
class DeviceTruth:
    site: str
    device: str
    count: int = 0
    first_seq: int = 0
    last_seq: int = 0
    digest: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)

    def record(self, seq: int, value: float) -> None:
        """A valid reading delivered."""
        if self.count == 0 or seq < self.first_seq:
            self.first_seq = seq
        self.count += 1
        self.last_seq = max(self.last_seq, seq)
        self.digest = (self.digest + one_digest(seq, value)) & _MASK

    def record_invalid(self, seq: int, kind: str) -> None:
        """A reading sent deliberately invalid: the agent must dead-letter it."""
        if kind not in INVALID_KINDS:
            raise ValueError(f"unknown invalid kind {kind!r}; expected one of {INVALID_KINDS}")
        self.invalid.append((seq, kind))

    def record_noise(self, payload: bytes) -> None:
        """A message no decoder can take a reading from, and no dead letter can be matched
        to a reading by: it is matched by its bytes."""
        self.noise.append(payload_digest(payload))


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
        """Valid readings delivered (what should be in TELEMETRY)."""
        return sum(d.count for d in self.devices.values())

    @property
    def invalid(self) -> int:
        return sum(len(d.invalid) for d in self.devices.values())

    def noise(self) -> set[str]:
        """Digests of every noise message, all devices together."""
        return {n for d in self.devices.values() for n in d.noise}

    def save(self, path: Path) -> None:
        rows = [asdict(d) for d in self.devices.values()]
        Path(path).write_bytes(orjson.dumps({"version": 2, "devices": rows}))

    @classmethod
    def load(cls, path: Path) -> GroundTruth:
        doc = orjson.loads(Path(path).read_bytes())
        if doc.get("version") not in (1, 2):
            raise ValueError(f"{path}: unknown ground truth version {doc.get('version')!r}")
        devices = {}
        for r in doc["devices"]:
            r["invalid"] = [(int(s), str(k)) for s, k in r.get("invalid", [])]
            devices[(r["site"], r["device"])] = DeviceTruth(**r)
        return cls(devices)

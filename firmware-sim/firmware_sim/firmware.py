"""The firmware of every device of one type, vectorised: sampling, seq, clock, faults.

A `DeviceGroup` advances in rounds: round r is every device's r-th message, sent at
`start + r * period + offset[i]`. The values and the fault decisions of a round are drawn
for all devices at once, from generators seeded by (seed, type), before any device of the
round sends; so the bytes each device sends depend only on the seed, the start time and
the round, never on scheduling. What happens to a message afterwards (queue, link,
transport) is the engine's business (`engine.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from devices.catalog import DeviceType
from devices.signals import SignalBank
from firmware_sim import payloads
from firmware_sim.payloads import Sample
from firmware_sim.profiles import Faults, Profile

# Faults decided per device per round, in this column order (part of the seeded stream).
FAULTS = (
    "link_drop", "broker_disconnect", "garbage", "truncated", "bad_checksum",
    "out_of_range", "nan", "duplicate", "clock_jump", "reboot",
)  # fmt: skip
_INVALID = ("nan", "out_of_range", "truncated", "bad_checksum")


@dataclass(slots=True, eq=False)
class Message:
    """One payload a device sends, and what it carries for the ground truth."""

    device: int  # index in the fleet
    payload: bytes
    seqs: list[int] = field(default_factory=list)  # valid readings
    values: list[float] = field(default_factory=list)
    invalid: list[tuple[int, str]] = field(default_factory=list)
    noise: bool = False  # garbage, or cut short: no reading a dead letter can be matched by
    send_twice: bool = False  # the duplicated-send fault
    delivered: bool = False
    topic: bytes = b""  # its own topic (ecosystem devices, firmware_sim/ecosystems.py)

    @property
    def readings(self) -> int:
        return len(self.seqs)


class DeviceGroup:
    def __init__(
        self,
        type_name: str,
        dtype: DeviceType,
        names: list[str],
        first_index: int,
        site: str,
        profile: Profile,
        seed: int,
        start_ns: int,
        rate_hz: float | None = None,
    ) -> None:
        self.type_name, self.dtype, self.names, self.site = type_name, dtype, names, site
        self.first_index, self.n = first_index, len(names)
        self.protocol = dtype.protocol
        self.rate_hz = rate_hz or dtype.rate_hz
        self.k = dtype.samples_per_message
        self.period_s = self.k / self.rate_hz
        self.start_ns = start_ns
        self.faults: Faults = profile.faults_for(type_name)
        type_key = int.from_bytes(type_name.encode()[:8].ljust(8, b"\0"), "little")
        setup = np.random.default_rng([seed, type_key, 0])
        self._fault_rng = np.random.default_rng([seed, type_key, 1])
        self._bytes_rng = np.random.default_rng([seed, type_key, 2])
        self.bank = SignalBank(dtype, self.n, np.random.default_rng([seed, type_key, 3]))
        self.metrics = [(name, spec.unit) for name, spec in dtype.metrics.items()]
        self.bounds = [(spec.min, spec.max) for spec in dtype.metrics.values()]
        # Per-device constants.
        self.offset_s = setup.uniform(0.0, self.period_s, self.n)
        self.order = [int(i) for i in np.argsort(self.offset_s, kind="stable")]
        faulty = setup.random(self.n) < profile.fleet_percent / 100.0
        self.faulty = faulty.tolist()
        self.seq_persist = (setup.random(self.n) < profile.seq_persist).tolist()
        self.skew_ns = (setup.standard_normal(self.n) * profile.clock_skew_s * 1e9).astype(int)
        self.drift_ppm = (setup.standard_normal(self.n) * profile.clock_drift_ppm).tolist()
        self._probs = np.array([getattr(self.faults, f) for f in FAULTS]) * faulty[:, None]
        self._skew: list[int] = self.skew_ns.tolist()
        # Firmware state.
        self.counter = [0] * self.n
        self.boot = [0] * self.n
        self.round = -1
        self._values: list[list[list[float]]] = []
        self._present: list[list[list[bool]]] = []
        self._hits: npt.NDArray[np.bool_] = np.zeros((self.n, len(FAULTS)), dtype=bool)
        self._any: list[bool] = []  # per device: any fault this round
        self._pick: list[int] = []

    # -- rounds ---------------------------------------------------------------------------

    def due_s(self, r: int, i: int) -> float:
        """Seconds after the fleet's start at which device i sends its round-r message."""
        return r * self.period_s + float(self.offset_s[i])

    def prepare(self, r: int) -> None:
        """Draw round r's values and fault decisions for every device at once."""
        self.round = r
        vals, pres = [], []
        for s in range(self.k):
            t_s = self.start_ns / 1e9 + (r * self.k + s) / self.rate_hz + self.offset_s
            v, p = self.bank.sample(t_s, (r * self.k + s) / self.rate_hz)
            vals.append(v)
            pres.append(p)
        # (n, k, m) as nested lists: reading one device's row is then cheap.
        self._values = np.stack(vals, axis=1).tolist()
        self._present = np.stack(pres, axis=1).tolist()
        u = self._fault_rng.random((self.n, len(FAULTS)))
        self._hits = u < self._probs
        self._any = np.asarray(self._hits.any(axis=1)).tolist()
        self._pick = self._fault_rng.integers(0, 1 << 30, self.n).tolist()

    def hits(self, i: int) -> set[str]:
        """The faults device i suffers this round."""
        if not self._any[i]:
            return set()
        return {f for f, hit in zip(FAULTS, self._hits[i].tolist(), strict=True) if hit}

    # -- firmware state -------------------------------------------------------------------

    def next_seq(self, i: int) -> int:
        self.counter[i] += 1
        return self.boot[i] << 32 | self.counter[i] if self.boot[i] else self.counter[i]

    def reboot(self, i: int) -> None:
        """Restart device i: its seq continues (kept in flash) or restarts under a new boot."""
        if not self.seq_persist[i]:
            self.boot[i] += 1
            self.counter[i] = 0

    def jump_clock(self, i: int) -> None:
        sign = 1 if self._pick[i] & 1 else -1
        self._skew[i] += sign * int(self.faults.clock_jump_s * 1e9)

    def time_ns(self, i: int, nominal_ns: int) -> int:
        """Device i's clock at true time `nominal_ns`: offset, drift, microsecond ticks."""
        elapsed = nominal_ns - self.start_ns
        t = nominal_ns + self._skew[i] + int(elapsed * self.drift_ppm[i] * 1e-6)
        return t - t % 1000

    # -- messages -------------------------------------------------------------------------

    def messages(self, i: int, faults: set[str]) -> list[Message]:
        """Device i's messages for the current round: garbage first, then each deliberately
        invalid reading alone, then one message with every valid reading."""
        samples = self._samples(i)
        dev = self.first_index + i
        name = self.names[i]
        out: list[Message] = []
        if "garbage" in faults:
            out.append(Message(dev, payloads.garbage(self._bytes_rng, self.protocol), noise=True))
        for kind in _INVALID:
            if kind in faults and samples and (kind != "bad_checksum" or self.protocol == "frame"):
                s = samples.pop(self._pick[i] % len(samples))
                out.append(self._invalid(dev, name, s, kind))
        if samples:
            msg = Message(
                dev,
                payloads.encode(self.protocol, self.site, name, samples),
                [s.seq for s in samples],
                [s.value for s in samples],
            )
            msg.send_twice = "duplicate" in faults
            out.append(msg)
        return out

    def _samples(self, i: int) -> list[Sample]:
        out = []
        base = self.start_ns + int(self.offset_s[i] * 1e9)
        values, present = self._values[i], self._present[i]
        for s in range(self.k):
            nominal = base + int((self.round * self.k + s) * 1e9 / self.rate_hz)
            t = self.time_ns(i, nominal)
            row, here = values[s], present[s]
            for j, (metric, unit) in enumerate(self.metrics):
                if here[j]:
                    out.append(Sample(metric, row[j], unit, t, self.next_seq(i)))
        return out

    def _invalid(self, dev: int, name: str, s: Sample, kind: str) -> Message:
        if kind == "nan":
            s = s._replace(value=math.nan)
        elif kind == "out_of_range":
            lo, hi = self.bounds[[m for m, _ in self.metrics].index(s.metric)]
            s = s._replace(value=hi + (hi - lo) * 0.5 if self._pick[dev - self.first_index] & 2
                           else lo - (hi - lo) * 0.5)  # fmt: skip
        if kind == "bad_checksum":
            payload = payloads.frame_line(name, s, bad_checksum=True)
        else:
            payload = payloads.encode(self.protocol, self.site, name, [s])
        if kind == "truncated":
            payload = payloads.truncate(payload, self._bytes_rng, self.protocol)
        return Message(dev, payload, invalid=[(s.seq, kind)], noise=kind == "truncated")

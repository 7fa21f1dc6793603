"""Signal models of a device type, vectorised across every device of that type.

One `SignalBank` holds the state of n devices by m metrics and produces one sample of
each per call: a daily cycle with a per-device phase, white noise, a per-device linear
drift, a random walk, level steps, single spikes, stuck values and sensor dropouts. Every
random draw comes from the generator it is given, in a fixed order, so the same seed gives
the same values whatever the wall clock does.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from devices.catalog import DeviceType

F64 = npt.NDArray[np.float64]
BoolArr = npt.NDArray[np.bool_]
_DAY_S = 86_400.0


class SignalBank:
    def __init__(self, dtype: DeviceType, n: int, rng: np.random.Generator) -> None:
        specs = list(dtype.metrics.values())
        self.n, self.m = n, len(specs)
        self._rng = rng

        def col(name: str) -> F64:
            return np.array([float(getattr(s, name)) for s in specs], dtype=np.float64)

        self.mean, self.amplitude, self.noise = col("mean"), col("amplitude"), col("noise")
        self.walk, self.step_size = col("walk"), col("step_size")
        self.spike_size = col("spike_size")
        self.step_prob, self.spike_prob = col("step_prob"), col("spike_prob")
        self.stuck_prob, self.dropout_prob = col("stuck_prob"), col("dropout_prob")
        self.lo, self.hi = col("min"), col("max")
        self.stuck_len = np.array([s.stuck_samples for s in specs], dtype=np.int64)
        self.dropout_len = np.array([s.dropout_samples for s in specs], dtype=np.int64)
        self.decimals = [s.decimals for s in specs]
        # Per-device constants.
        self.phase = rng.uniform(0.0, 2 * np.pi, n)
        self.drift = rng.standard_normal((n, self.m)) * col("drift_per_day")
        # Per-device state that evolves sample by sample.
        self.level = np.zeros((n, self.m))
        self.stuck_left = np.zeros((n, self.m), dtype=np.int64)
        self.stuck_value = np.zeros((n, self.m))
        self.dropout_left = np.zeros((n, self.m), dtype=np.int64)

    def sample(self, t_s: F64, elapsed_s: float) -> tuple[F64, BoolArr]:
        """One sample of every metric of every device at times `t_s` (shape n, seconds since
        the epoch); `elapsed_s` since the fleet started drives the drift. Returns the values
        (n by m, rounded to each metric's decimals, within [min, max]) and a mask of which
        are present (False during a sensor dropout)."""
        rng, shape = self._rng, (self.n, self.m)
        cycle = np.sin(2 * np.pi * t_s / _DAY_S + self.phase)[:, None]
        steps = (rng.random(shape) < self.step_prob) * rng.standard_normal(shape)
        self.level += steps * self.step_size + rng.standard_normal(shape) * self.walk
        v = self.mean + self.amplitude * cycle + self.level + self.drift * (elapsed_s / _DAY_S)
        v += rng.standard_normal(shape) * self.noise
        spikes = (rng.random(shape) < self.spike_prob) * rng.standard_normal(shape)
        v += spikes * self.spike_size
        v = np.clip(v, self.lo, self.hi)
        for j, d in enumerate(self.decimals):
            v[:, j] = np.round(v[:, j], d)
        v = self._stick(v, rng.random(shape))
        return v, self._present(rng.random(shape))

    def _stick(self, v: F64, u: F64) -> F64:
        """A stuck sensor repeats the value it froze on for `stuck_samples` samples."""
        start = (self.stuck_left == 0) & (u < self.stuck_prob)
        self.stuck_value[start] = v[start]
        self.stuck_left[start] = np.broadcast_to(self.stuck_len, v.shape)[start]
        stuck = self.stuck_left > 0
        self.stuck_left[stuck] -= 1
        return np.where(stuck, self.stuck_value, v)

    def _present(self, u: F64) -> BoolArr:
        start = (self.dropout_left == 0) & (u < self.dropout_prob)
        self.dropout_left[start] = np.broadcast_to(self.dropout_len, u.shape)[start]
        missing = self.dropout_left > 0
        self.dropout_left[missing] -= 1
        return ~missing

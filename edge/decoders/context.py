"""What a decoder knows besides the payload, and helpers shared by the decoders."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge.errors import DecodeError
from gateway.errors import InvalidTokenError
from gateway.reading import Reading
from gateway.subjects import check_token

NO_SEQ = -1  # a reading whose format carries no sequence number (never deduplicated)
MAX_READINGS_PER_MESSAGE = 10_000
_INT63 = 1 << 63


@dataclass(frozen=True, slots=True)
class SeriesColumns:
    """The readings of one series (site, device, metric, unit) from one message, as
    columns: the form in which a pack of many readings goes through the agent quickly."""

    site: str
    device: str
    metric: str
    unit: str
    value: npt.NDArray[np.float64]
    time_ns: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def reading(self, i: int, flags: int = 0) -> Reading:
        return Reading(
            self.site,
            self.device,
            self.metric,
            float(self.value[i]),
            self.unit,
            int(self.time_ns[i]),
            int(self.seq[i]),
            flags,
        )


@dataclass(frozen=True, slots=True)
class Context:
    site: str  # used when the payload names no site
    received_ns: int  # wall-clock receive time: the event time of readings without one
    topic: str = ""
    device: str | None = None  # used when the payload names no device
    # Publish (topic, payload) back through the broker connection the message came by:
    # Sparkplug B's rebirth request. None where there is none (serial, `gateway decode`).
    publish: Callable[[str, bytes], None] | None = None

    @classmethod
    def for_topic(
        cls,
        site: str,
        topic: str,
        received_ns: int,
        publish: Callable[[str, bytes], None] | None = None,
    ) -> Context:
        """Default device: the last topic level (`sensors/site1/dev-7` -> `dev-7`)."""
        last = topic.rsplit("/", 1)[-1]
        return cls(site, received_ns, topic, last or None, publish)


# A memo of a pure function (is this name subject-safe?), bounded and cleared whole: an
# lru_cache of 16k thrashed under a flood of 100,000 names (3 x slower, 20 MB kept).
_SAFE: set[str] = set()  # names already checked: the same few recur in every message
_SAFE_MAX = 100_000


def token(kind: str, value: object) -> str:
    """A subject-safe site/device/metric name, or a `DecodeError` `invalid_<kind>`."""
    if not isinstance(value, str):
        raise DecodeError("wrong_type", f"{kind}={value!r}")
    if value in _SAFE:
        return value
    try:
        check_token(kind, value)
    except InvalidTokenError as exc:
        raise DecodeError(f"invalid_{kind}", str(exc)) from None
    if len(_SAFE) >= _SAFE_MAX:
        _SAFE.clear()
    _SAFE.add(value)
    return value


def make_reading(
    site: str,
    device: str | None,
    metric: str,
    value: float,
    unit: str,
    time_ns: int,
    seq: int,
    flags: int = 0,
) -> Reading:
    """Build a reading after the checks every format shares."""
    if device is None:
        raise DecodeError("missing_field", "device")
    if not math.isfinite(value):
        raise DecodeError("non_finite_value", repr(value))
    if not NO_SEQ <= seq < _INT63:
        raise DecodeError("invalid_seq", repr(seq))
    if not 0 <= time_ns < _INT63:
        raise DecodeError("invalid_time", repr(time_ns))
    return Reading(
        site=token("site", site),
        device=token("device", device),
        metric=token("metric", metric),
        value=float(value),
        unit=unit,
        time_ns=time_ns,
        seq=seq,
        flags=flags,
    )

"""The device catalog, defined in data (`catalog.toml`) and loaded into typed models.

The simulator reads the signal parameters; the edge agent's validation reads `unit`,
`min` and `max`. Metric names are unique across the catalog, so a reading can be
validated by its metric alone (`Catalog.metric(name)`).
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.config import parse

Protocol = Literal["json", "senml", "line", "frame"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricSpec(_Model):
    """A metric's unit and valid range, and the parameters of its simulated signal."""

    unit: str
    min: float
    max: float
    mean: float = 0.0
    amplitude: float = 0.0  # of the daily cycle
    noise: float = 0.0  # standard deviation of white noise per sample
    drift_per_day: float = 0.0  # standard deviation of each device's linear drift
    walk: float = 0.0  # standard deviation of a random walk step per sample (GPS position)
    step_prob: float = Field(0.0, ge=0, le=1)  # per sample: the level shifts for good
    step_size: float = 0.0
    spike_prob: float = Field(0.0, ge=0, le=1)  # per sample: one value far off
    spike_size: float = 0.0
    stuck_prob: float = Field(0.0, ge=0, le=1)  # per sample: the sensor freezes
    stuck_samples: int = Field(30, ge=1)
    dropout_prob: float = Field(0.0, ge=0, le=1)  # per sample: the sensor returns nothing
    dropout_samples: int = Field(5, ge=1)
    decimals: int = Field(3, ge=0, le=9)

    @model_validator(mode="after")
    def _range(self) -> MetricSpec:
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class DeviceType(_Model):
    description: str = ""
    protocol: Protocol = "json"
    rate_hz: float = Field(1.0, gt=0)  # samples per second of every metric
    samples_per_message: int = Field(1, ge=1, le=1000)  # high-rate devices send packs
    baud: int = Field(115_200, ge=300)  # when attached over serial
    prefix: str = "dev"  # device names: <prefix>-<index>
    metrics: dict[str, MetricSpec] = Field(min_length=1)


class Catalog(_Model):
    types: dict[str, DeviceType]

    @model_validator(mode="after")
    def _unique_metrics(self) -> Catalog:
        seen: dict[str, str] = {}
        for tname, dtype in self.types.items():
            for metric in dtype.metrics:
                if metric in seen:
                    raise ValueError(
                        f"metric {metric!r} is in both {seen[metric]!r} and {tname!r};"
                        " metric names must be unique across the catalog"
                    )
                seen[metric] = tname
        return self

    def metric(self, name: str) -> MetricSpec | None:
        """The spec of metric `name` whatever its device type, or None if unknown."""
        for dtype in self.types.values():
            spec = dtype.metrics.get(name)
            if spec is not None:
                return spec
        return None


class RangeSpec(_Model):
    """A metric's unit and valid range in a validation-only type (`types.toml`)."""

    unit: str
    min: float
    max: float


class ValidationType(_Model):
    description: str = ""
    metrics: dict[str, RangeSpec] = Field(min_length=1)


class ValidationTypes(_Model):
    types: dict[str, ValidationType]


def load_validation_types(path: Path | None = None) -> ValidationTypes:
    """The validation-only device types shipped in `devices/types.toml`, or those at `path`."""
    return _load(ValidationTypes, "types.toml", path)


def load_catalog(path: Path | None = None) -> Catalog:
    """Load the catalog shipped with the package, or the one at `path`."""
    return _load(Catalog, "catalog.toml", path)


M = TypeVar("M", bound=BaseModel)


def _load(model: type[M], shipped: str, path: Path | None) -> M:
    if path is None:
        text = resources.files("devices").joinpath(shipped).read_text()
        origin = f"devices/{shipped}"
    else:
        text, origin = Path(path).read_text(), str(path)
    return parse(model, tomllib.loads(text), origin)

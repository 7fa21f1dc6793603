"""The device catalog, defined in data (`catalog.toml`) and loaded into typed models."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.config import parse


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricSpec(_Model):
    unit: str
    min: float
    max: float
    mean: float = 0.0
    amplitude: float = 0.0
    noise: float = 0.0


class DeviceType(_Model):
    description: str = ""
    protocol: Literal["json"] = "json"
    rate_hz: float = Field(1.0, gt=0)
    metrics: dict[str, MetricSpec]


class Catalog(_Model):
    types: dict[str, DeviceType]


def load_catalog(path: Path | None = None) -> Catalog:
    """Load the catalog shipped with the package, or the one at `path`."""
    if path is None:
        text = resources.files("devices").joinpath("catalog.toml").read_text()
        origin = "devices/catalog.toml"
    else:
        text, origin = Path(path).read_text(), str(path)
    return parse(Catalog, tomllib.loads(text), origin)

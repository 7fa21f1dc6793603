"""Fault profiles: how badly a fleet misbehaves, defined in data (`profiles.toml`).

A profile picks `fleet_percent` of the devices of each type to be faulty; each fault is a
probability per message for those devices. `types.<name>` replaces the faults for one
device type.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gateway.config import parse
from gateway.errors import ConfigError

Prob = Field(0.0, ge=0.0, le=1.0)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Faults(_Model):
    link_drop: float = Prob  # the device loses its link; readings queue on the device
    link_drop_s: float = Field(3.0, gt=0)
    broker_disconnect: float = Prob  # the MQTT connection is cut (TCP closed)
    garbage: float = Prob  # a message of noise before the real one
    truncated: float = Prob  # one reading sent cut short
    bad_checksum: float = Prob  # serial frames only
    out_of_range: float = Prob  # one reading outside the catalog range
    nan: float = Prob  # one reading NaN
    duplicate: float = Prob  # the message is sent twice
    clock_jump: float = Prob  # the device clock jumps by ±clock_jump_s
    clock_jump_s: float = Field(3600.0, gt=0)
    reboot: float = Prob  # RAM queue lost; seq continues or restarts with a new boot id

    def invalid_any(self) -> bool:
        return any((self.garbage, self.truncated, self.bad_checksum, self.out_of_range, self.nan))


class Profile(_Model):
    description: str = ""
    fleet_percent: float = Field(100.0, ge=0.0, le=100.0)
    queue_max: int = Field(32, ge=1)  # messages the device holds while its link is down
    seq_persist: float = Field(0.5, ge=0.0, le=1.0)  # share of devices keeping seq on reboot
    clock_skew_s: float = Field(0.2, ge=0.0)  # standard deviation of each clock's offset
    clock_drift_ppm: float = Field(20.0, ge=0.0)
    faults: Faults = Field(default_factory=lambda: Faults.model_validate({}))
    types: dict[str, Faults] = Field(default_factory=dict)

    def faults_for(self, device_type: str) -> Faults:
        return self.types.get(device_type, self.faults)


class Profiles(_Model):
    profiles: dict[str, Profile]


def load_profiles(path: Path | None = None) -> dict[str, Profile]:
    if path is None:
        text = resources.files("firmware_sim").joinpath("profiles.toml").read_text()
        origin = "firmware_sim/profiles.toml"
    else:
        text, origin = Path(path).read_text(), str(path)
    return parse(Profiles, tomllib.loads(text), origin).profiles


def get_profile(name: str) -> Profile:
    profiles = load_profiles()
    if name not in profiles:
        raise ConfigError(f"unknown fault profile {name!r}; known: {', '.join(sorted(profiles))}")
    return profiles[name]

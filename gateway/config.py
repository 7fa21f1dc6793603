"""Typed, validated configuration for each process, loaded from TOML.

Every model forbids unknown keys, so a typo is reported with its path
(`sources.0.topcis: Extra inputs are not permitted`) instead of being ignored.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway import subjects
from gateway.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsSettings(_Model):
    url: str = "nats://127.0.0.1:4222"
    connect_timeout_s: float = 5.0


class MqttSourceSettings(_Model):
    type: Literal["mqtt"] = "mqtt"
    url: str = "mqtt://127.0.0.1:1883"
    topics: list[str] = Field(default_factory=lambda: ["sensors/#"], min_length=1)
    format: Literal["json"] = "json"
    client_id: str | None = None  # default: gw-<site>-<agent>
    username: str | None = None
    password: str | None = None
    max_inflight: Annotated[int, Field(ge=1, le=65535)] = 1000


class BatchSettings(_Model):
    max_readings: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    max_bytes: Annotated[int, Field(ge=1024)] = 1_000_000
    linger_ms: Annotated[int, Field(ge=1, le=60_000)] = 250


class BufferSettings(_Model):
    max_bytes: Annotated[int, Field(ge=1 << 16)] = 256 << 20
    # Readings older than this are dropped (reason "expired"); 0 keeps them until max_bytes.
    max_age_s: Annotated[float, Field(ge=0)] = 7 * 86400.0
    # What a full buffer (or a full disk) does: see docs/operations.md.
    overflow: Literal["drop_oldest", "drop_newest", "block"] = "drop_oldest"
    # SQLite synchronous mode: "normal" (WAL, fsync at checkpoints) or "full" (every commit).
    durability: Literal["normal", "full"] = "normal"


class UplinkSettings(_Model):
    publish_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    # One publish window (two are in flight at once): at most this many batches / bytes.
    max_batches_per_round: Annotated[int, Field(ge=1)] = 256
    max_window_bytes: Annotated[int, Field(ge=1 << 16)] = 8 << 20
    backoff_first_s: Annotated[float, Field(gt=0)] = 0.1
    backoff_max_s: Annotated[float, Field(gt=0)] = 10.0
    heartbeat_s: Annotated[float, Field(gt=0)] = 2.0


class AgentConfig(_Model):
    site: str
    agent: str
    data_dir: Path = Path("var/agent")
    nats: NatsSettings = NatsSettings()
    sources: list[MqttSourceSettings] = Field(default_factory=lambda: [MqttSourceSettings()])
    batch: BatchSettings = BatchSettings()
    buffer: BufferSettings = BufferSettings()
    uplink: UplinkSettings = UplinkSettings()

    @field_validator("site", "agent")
    @classmethod
    def _token(cls, v: str) -> str:
        return subjects.check_token("name", v)


class StreamSettings(_Model):
    replicas: Annotated[int, Field(ge=1, le=5)] = 1
    duplicate_window_s: Annotated[float, Field(gt=0)] = 120.0
    telemetry_max_age_s: Annotated[float, Field(ge=0)] = 7 * 86400.0
    telemetry_max_bytes: int = -1
    agg_max_age_s: Annotated[float, Field(ge=0)] = 30 * 86400.0


class AggregatorSettings(_Model):
    window_s: Annotated[int, Field(ge=1)] = 10
    lateness_s: Annotated[float, Field(ge=0)] = 2.0
    # Close a window by wall clock too, once no newer reading has come for this long.
    idle_close_s: Annotated[float, Field(ge=0)] = 3.0
    fetch_batch: Annotated[int, Field(ge=1)] = 256
    live_update_s: Annotated[float, Field(gt=0)] = 1.0


class CloudConfig(_Model):
    nats: NatsSettings = NatsSettings()
    streams: StreamSettings = StreamSettings()
    aggregator: AggregatorSettings = AggregatorSettings()


M = TypeVar("M", bound=BaseModel)


def load(model: type[M], path: Path) -> M:
    """Read `path` as TOML into `model`; raise `ConfigError` naming file and key."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(model, data, str(path))


def parse(model: type[M], data: object, origin: str = "config") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{origin}: {problems}") from None

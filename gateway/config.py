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
    # SQLite synchronous mode: "normal" (WAL, fsync at checkpoints) or "full" (every commit).
    durability: Literal["normal", "full"] = "normal"


class UplinkSettings(_Model):
    publish_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    max_batches_per_round: Annotated[int, Field(ge=1)] = 64
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
    agg_max_bytes: int = -1
    dlq_max_age_s: Annotated[float, Field(ge=0)] = 30 * 86400.0
    dlq_max_bytes: int = -1


class AggregatorSettings(_Model):
    # Tumbling window widths; each must divide a day so windows align across series.
    windows_s: list[Annotated[int, Field(ge=1, le=86400)]] = Field(
        default_factory=lambda: [10, 60], min_length=1
    )
    lateness_s: Annotated[float, Field(ge=0)] = 2.0
    # Also emit an agent's open windows once it has sent nothing for this long (wall clock);
    # they stay revisable until final, so this only makes results visible sooner.
    idle_close_s: Annotated[float, Field(ge=0)] = 3.0
    fetch_batch: Annotated[int, Field(ge=1)] = 256
    live_update_s: Annotated[float, Field(gt=0)] = 1.0
    checkpoint_interval_s: Annotated[float, Field(ge=0)] = 1.0
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None  # 0: any free port

    @field_validator("windows_s")
    @classmethod
    def _distinct_divisors(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("window widths must be distinct")
        if any(86400 % w for w in v):
            raise ValueError("each window width must divide 86400 s (one day)")
        return v


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

"""Typed, validated configuration for each process, loaded from TOML.

Every model forbids unknown keys, so a typo is reported with its path
(`sources.0.topcis: Extra inputs are not permitted`) instead of being ignored.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway import subjects
from gateway.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsSettings(_Model):
    url: str = "nats://127.0.0.1:4222"
    connect_timeout_s: float = 5.0
    creds_file: Path | None = None  # NATS credentials (bootstrap writes etc/nats.creds)
    # The CA that signed the server's certificate (`gateway cloud up` writes tls/ca.pem);
    # None: the system's trust store. The connection is TLS either way.
    ca_file: Path | None = None


PayloadFormat = Literal["json", "senml", "line", "frame", "mapped", "value", "sparkplug"]


# -- mapping what real devices send (docs/devices.md) ---------------------------------------
class MetricMapping(_Model):
    """Per metric (by its name after normalisation): a new name, its unit, a scale."""

    name: str | None = None
    unit: str = ""
    unit_path: str | None = None  # JMESPath to the unit in the payload (Tasmota `TempUnit`)
    scale: float = 1.0  # value x scale (Shelly Gen1 energy in watt-minutes -> Wh: 1/60)


class MappingSettings(_Model):
    """Where site, device, metric, value, unit and time come from, for payloads that are not
    our own schema. Templates (`{device}-{channel}`) name topic-pattern parts, `paths`
    values, line-protocol tags and, for metrics, `{path}` / `{key}` / `{parent}` of a JSON
    leaf. Patterns, templates and JMESPath expressions are checked when the agent starts."""

    topic_patterns: list[str] = Field(default_factory=list)
    ignore_topics: list[str] = Field(default_factory=list)
    paths: dict[str, str] = Field(default_factory=dict)  # template name -> JMESPath
    site: str | None = None  # template; default: the agent's site
    device: str = "{device}"
    metric: str = "{path}"
    metric_case: Literal["keep", "lower", "snake"] = "snake"
    readings: str = "@"  # JMESPath to the object whose numeric leaves are readings
    when: str | None = None  # JMESPath: a message where it is false is not a device's
    include: list[str] = Field(default_factory=list)  # globs over key paths / metric names
    skip: list[str] = Field(default_factory=list)
    time_path: str | None = None  # JMESPath; none: the receive time
    # "auto" (epoch by magnitude, or ISO 8601), "s", "ms", "us", "ns", "iso8601", or a
    # strftime pattern such as "%d.%m.%Y %H:%M:%S"
    time_format: str = "auto"
    time_zone: str = "UTC"  # for times that carry no offset (Tasmota sends local time)
    seq_path: str | None = None
    unit: str = ""  # for metrics with no unit of their own
    units: dict[str, str] = Field(default_factory=dict)  # device's spelling -> ours (C -> Cel)
    metrics: dict[str, MetricMapping] = Field(default_factory=dict)

    @field_validator("time_format")
    @classmethod
    def _time_format(cls, v: str) -> str:
        if v not in ("auto", "s", "ms", "us", "ns", "iso8601") and "%" not in v:
            raise ValueError("use auto, s, ms, us, ns, iso8601 or a strftime pattern")
        return v


def _readable(key: str, path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{key} {str(path)!r}: cannot read: {exc.strerror}") from None


class MqttTlsSettings(_Model):
    """TLS towards the MQTT broker (`mqtts://`, or this table with any URL). The files are
    read and checked at load, so a wrong path fails there with its key, not in the source."""

    ca_file: Path | None = None  # the CA that signed the broker's certificate
    system_ca: bool = False  # True: trust the system's CA store (when ca_file is not set)
    cert_file: Path | None = None  # our client certificate (PEM), for `require_certificate`
    key_file: Path | None = None  # its private key (PEM, unencrypted)
    server_name: str | None = None  # the name the broker's certificate must carry

    @model_validator(mode="after")
    def _files(self) -> MqttTlsSettings:
        if self.ca_file is None and not self.system_ca:
            raise ValueError("set ca_file, or system_ca = true to trust the system's CAs")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        if self.ca_file is not None:
            _check_certificates("ca_file", self.ca_file)
        if self.cert_file is not None and self.key_file is not None:
            _check_key_pair(self.cert_file, self.key_file)
        return self


def _check_certificates(key: str, path: Path) -> list[Any]:
    from cryptography import x509  # here: only configs with TLS pay for the import

    data = _readable(key, path)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{key} {str(path)!r}: not a PEM certificate") from None


def _check_key_pair(cert_path: Path, key_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    cert = _check_certificates("cert_file", cert_path)[0]
    data = _readable("key_file", key_path)
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError):
        raise ValueError(
            f"key_file {str(key_path)!r}: not an unencrypted PEM private key"
        ) from None
    public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*public) != key.public_key().public_bytes(*public):
        raise ValueError(f"key_file {str(key_path)!r} is not the key of cert_file")


class PrivacySettings(_Model):
    """A source's privacy rules, applied to each reading right after decoding, before
    validation and before anything is stored (edge/filters/privacy.py). Patterns are
    globs (`fnmatch`, case-sensitive) over device and metric names as decoded."""

    drop_devices: list[str] = Field(default_factory=list)  # every reading of these devices
    drop_metrics: list[str] = Field(default_factory=list)  # these metrics, of any device
    # metric pattern -> decimals kept (`lat = 2`: about 1 km); negative: tens, hundreds...
    round: dict[str, Annotated[int, Field(ge=-9, le=15)]] = Field(default_factory=dict)
    # A message this source refuses (undecodable, invalid) becomes a dead letter with its
    # raw bytes, which hold what the rules drop or coarsen: by default only its reason and
    # detail are kept.
    dead_letter_payload: Literal["withhold", "keep"] = "withhold"


class MqttSourceSettings(_Model):
    type: Literal["mqtt"] = "mqtt"
    url: str = "mqtt://127.0.0.1:1883"  # mqtts://host[:8883] for TLS (needs [tls])
    tls: MqttTlsSettings | None = None
    topics: list[str] = Field(default_factory=lambda: ["sensors/#"], min_length=1)
    format: PayloadFormat = "json"
    client_id: str | None = None  # default: gw-<site>-<agent>
    username: str | None = None
    password: str | None = None
    max_inflight: Annotated[int, Field(ge=1, le=65535)] = 1000

    # What the payloads mean (formats `mapped` and `value` need it; the others may use
    # its topic patterns for site and device).
    mapping: MappingSettings | None = None
    privacy: PrivacySettings | None = None

    @model_validator(mode="after")
    def _mapping_needed(self) -> MqttSourceSettings:
        if self.format in ("mapped", "value") and self.mapping is None:
            raise ValueError(f"format {self.format!r} needs a [mapping] table")
        return self

    @model_validator(mode="after")
    def _tls_needed(self) -> MqttSourceSettings:
        if self.url.startswith("mqtts://") and self.tls is None:
            raise ValueError(
                "url: mqtts:// needs a [sources.tls] table (ca_file, or system_ca = true)"
            )
        return self


class SerialSourceSettings(_Model):
    """A serial port (pyserial), one frame per line."""

    type: Literal["serial"]
    port: str  # e.g. /dev/ttyUSB0, or a stable symlink such as /dev/serial/by-id/...
    device: str | None = None  # the device name for frames that carry none
    format: Literal["json", "senml", "line", "frame"] = "frame"
    baudrate: Annotated[int, Field(ge=50, le=4_000_000)] = 9600
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = 1.0
    max_line: Annotated[int, Field(ge=16, le=65536)] = 1024
    reconnect_max_s: Annotated[float, Field(gt=0)] = 5.0
    privacy: PrivacySettings | None = None

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, v: float) -> float:
        if v not in (1, 1.5, 2):
            raise ValueError("stopbits must be 1, 1.5 or 2")
        return v


def _source_type(v: Any) -> str:
    return str(v.get("type", "mqtt") if isinstance(v, dict) else getattr(v, "type", "mqtt"))


SourceSettings = Annotated[
    Annotated[MqttSourceSettings, Tag("mqtt")] | Annotated[SerialSourceSettings, Tag("serial")],
    Discriminator(_source_type),
]


def _default_sources() -> list[SourceSettings]:
    return [MqttSourceSettings()]


class TypeBinding(_Model):
    """Devices (glob patterns over the device token) bound to a device type: ranges and
    units are then those of (type, metric). The first binding that matches wins."""

    devices: list[str] = Field(min_length=1)
    type: str  # a type of devices/catalog.toml or devices/types.toml


class ValidationSettings(_Model):
    out_of_range: Literal["reject", "flag"] = "reject"
    unknown_metrics: Literal["accept", "reject"] = "accept"
    max_future_s: Annotated[float, Field(gt=0)] = 300.0
    # A device time older than this is replaced by the receive time; None keeps every
    # plausible one (after device_time_floor): a device that buffered for a week is right.
    max_past_s: Annotated[float, Field(gt=0)] | None = None
    # Device times before this date are a clock that was never set (1970 after a reboot).
    device_time_floor: dt.date = dt.date(2000, 1, 1)
    types: list[TypeBinding] = Field(default_factory=list)
    # Before this date the agent's own clock is taken as never synchronised (no RTC).
    clock_floor: dt.date = dt.date(2025, 1, 1)
    clock_sync_file: Path | None = None  # e.g. /run/systemd/timesync/synchronized


class _FilterBase(_Model):
    metrics: list[str] = Field(default_factory=lambda: ["*"], min_length=1)


class DeadbandSettings(_FilterBase):
    type: Literal["deadband"]
    absolute: Annotated[float, Field(ge=0)] | None = None
    percent: Annotated[float, Field(ge=0)] | None = None
    heartbeat_s: Annotated[float, Field(gt=0)] = 60.0

    @model_validator(mode="after")
    def _one_threshold(self) -> DeadbandSettings:
        if (self.absolute is None) == (self.percent is None):
            raise ValueError("set exactly one of 'absolute' and 'percent'")
        return self


class DownsampleSettings(_FilterBase):
    type: Literal["downsample"]
    max_rate_hz: Annotated[float, Field(gt=0)]


class DedupeSettings(_FilterBase):
    type: Literal["dedupe"]
    window: Annotated[int, Field(ge=1, le=1_000_000)] = 1024  # seqs remembered per series


class OutlierSettings(_FilterBase):
    type: Literal["outlier"]
    window: Annotated[int, Field(ge=5, le=10_000)] = 60
    threshold: Annotated[float, Field(gt=0)] = 3.5  # robust z-score (median/MAD)
    min_samples: Annotated[int, Field(ge=3)] = 10
    drop: bool = False  # flag only, by default


FilterSettings = Annotated[
    DeadbandSettings | DownsampleSettings | DedupeSettings | OutlierSettings,
    Field(discriminator="type"),
]


class MetricsSettings(_Model):
    """Prometheus /metrics and /healthz, on loopback. port 0 picks a free port."""

    port: Annotated[int, Field(ge=0, le=65535)] | None = None  # None: no endpoint
    host: Literal["127.0.0.1", "::1"] = "127.0.0.1"


class BatchSettings(_Model):
    max_readings: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    max_bytes: Annotated[int, Field(ge=1024)] = 1_000_000
    linger_ms: Annotated[int, Field(ge=1, le=60_000)] = 1000
    encoding: Literal["columns", "senml"] = "columns"
    # A series silent this long is forgotten by the exact-copy check (edge/dedupe.py):
    # what bounds the agent's memory when device names come and go.
    forget_series_after_s: Annotated[float, Field(gt=0)] = 3600.0


class BufferSettings(_Model):
    max_bytes: Annotated[int, Field(ge=1 << 16)] = 256 << 20
    # Readings older than this are dropped (reason "expired"); 0 keeps them until max_bytes.
    max_age_s: Annotated[float, Field(ge=0)] = 7 * 86400.0
    # What a full buffer (or a full disk) does: see docs/operations.md.
    overflow: Literal["drop_oldest", "drop_newest", "block", "downsample"] = "drop_oldest"
    # SQLite synchronous mode: "normal" (WAL, fsync at checkpoints) or "full" (every commit).
    durability: Literal["normal", "full"] = "normal"
    # AES-GCM encryption of stored payloads (edge/buffer_cipher.py); None: off. The file
    # (from `gateway edge buffer-key`) must lie outside data_dir and be mode 0600.
    encryption_key_file: Path | None = None


class UplinkSettings(_Model):
    publish_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    # One publish window (three are in flight at once): at most this many batches / bytes.
    max_batches_per_round: Annotated[int, Field(ge=1)] = 256
    max_window_bytes: Annotated[int, Field(ge=1 << 16)] = 8 << 20
    backoff_first_s: Annotated[float, Field(gt=0)] = 0.1
    backoff_max_s: Annotated[float, Field(gt=0)] = 10.0
    heartbeat_s: Annotated[float, Field(gt=0)] = 2.0
    # /healthz says "not ready" once the buffer has held batches this long without one
    # being published (a stalled uplink: cloud down, or refusing).
    stall_after_s: Annotated[float, Field(gt=0)] = 60.0


class AgentConfig(_Model):
    site: str
    agent: str
    data_dir: Path = Path("var/agent")
    catalog: Path | None = None  # device catalog for validation; default: the shipped one
    nats: NatsSettings = NatsSettings()
    sources: list[SourceSettings] = Field(default_factory=_default_sources)
    validation: ValidationSettings = ValidationSettings()
    filters: list[FilterSettings] = Field(default_factory=list)
    metrics: MetricsSettings = MetricsSettings()
    batch: BatchSettings = BatchSettings()
    buffer: BufferSettings = BufferSettings()
    uplink: UplinkSettings = UplinkSettings()

    @field_validator("site", "agent")
    @classmethod
    def _token(cls, v: str) -> str:
        return subjects.check_token("name", v)

    @model_validator(mode="after")
    def _key_outside_data_dir(self) -> AgentConfig:
        key = self.buffer.encryption_key_file
        if key is not None and Path(key).resolve().is_relative_to(self.data_dir.resolve()):
            raise ValueError(
                f"buffer.encryption_key_file {str(key)!r} is inside data_dir: keep the key"
                " apart from the data it protects (a copy of data_dir would carry it)"
            )
        return self


class StreamSettings(_Model):
    replicas: Annotated[int, Field(ge=1, le=5)] = 1
    duplicate_window_s: Annotated[float, Field(gt=0)] = 120.0
    telemetry_max_age_s: Annotated[float, Field(ge=0)] = 7 * 86400.0
    telemetry_max_bytes: int = -1
    # AGG as a whole (0: no limit); each window width's records expire by
    # `agg_retention_s` (a per-message TTL), so fine windows go long before rollups do.
    agg_max_age_s: Annotated[float, Field(ge=0)] = 0.0
    agg_max_bytes: int = -1
    agg_retention_s: dict[str, Annotated[float, Field(ge=1)]] = Field(
        default_factory=lambda: {
            "10s": 30 * 86400.0,
            "1m": 30 * 86400.0,
            "1h": 400 * 86400.0,
            "1d": 10 * 365 * 86400.0,
        }
    )
    dlq_max_age_s: Annotated[float, Field(ge=0)] = 30 * 86400.0
    dlq_max_bytes: int = -1

    @field_validator("agg_retention_s")
    @classmethod
    def _window_labels(cls, v: dict[str, float]) -> dict[str, float]:
        for label in v:
            if not re.fullmatch(r"[1-9][0-9]*[smhd]", label):
                raise ValueError(f"{label!r} is not a window label like 10s, 1m, 1h or 1d")
        return v


class AggregatorSettings(_Model):
    # Tumbling window widths; each must divide a day so windows align across series.
    windows_s: list[Annotated[int, Field(ge=1, le=86400)]] = Field(
        default_factory=lambda: [10, 60, 3600, 86400], min_length=1
    )
    lateness_s: Annotated[float, Field(ge=0)] = 2.0
    # Also emit an agent's open windows once it has sent nothing for this long (wall clock);
    # they stay revisable until final, so this only makes results visible sooner.
    idle_close_s: Annotated[float, Field(ge=0)] = 3.0
    # An agent silent this long has its windows made final (so it stops pinning restarts).
    idle_final_s: Annotated[float, Field(ge=0)] = 600.0
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


class ViewSettings(_Model):
    # `/api/live` clients at once, over all filters; one more gets 503.
    live_max_clients: Annotated[int, Field(ge=1)] = 1000


class CloudConfig(_Model):
    nats: NatsSettings = NatsSettings()
    streams: StreamSettings = StreamSettings()
    aggregator: AggregatorSettings = AggregatorSettings()
    views: ViewSettings = ViewSettings()


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


def _type_tags(*unions: Any) -> frozenset[str]:
    """The `type` values of every member of `type`-discriminated unions, read from the
    models themselves so a new source or filter is listed once, in its own model."""
    tags: set[str] = set()
    for union in unions:
        members = get_args(get_args(union)[0])  # Annotated[A | B, ...] -> (A, B)
        for member in members:
            model = get_args(member)[0] if get_origin(member) is Annotated else member
            tags.update(get_args(model.model_fields["type"].annotation))
    return frozenset(tags)


# Pydantic puts a union member's tag in an error's location (`sources.0.mqtt.topcis`);
# the user wrote `sources.0.topcis`.
_UNION_TAGS = _type_tags(SourceSettings, FilterSettings)


def _key_path(loc: tuple[int | str, ...]) -> str:
    keep = [
        p for i, p in enumerate(loc) if not (p in _UNION_TAGS and i and isinstance(loc[i - 1], int))
    ]
    return ".".join(str(p) for p in keep)


def parse(model: type[M], data: object, origin: str = "config") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_key_path(err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{origin}: {problems}") from None


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` layered on `base`: tables merge key by key, anything else (lists included)
    is replaced. Used to layer a device's file and pushed config over defaults."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


# What `gateway deploy config` may push to an agent; the rest is device-local.
PUSHABLE = ("sources", "validation", "filters", "batch", "buffer", "uplink")
_RESTART_ONLY = {"buffer": ("durability", "encryption_key_file")}


def parse_overlay(text: str) -> dict[str, Any]:
    """The pushed TOML as a dict; `ConfigError` naming any key that may not be pushed."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    for key, value in doc.items():
        if key not in PUSHABLE:
            raise ConfigError(
                f"{key}: is device-local and cannot be pushed ({', '.join(PUSHABLE)} can)"
            )
        for sub in _RESTART_ONLY.get(key, ()):
            if isinstance(value, dict) and sub in value:
                raise ConfigError(f"{key}.{sub}: takes effect only at install, not by push")
    return doc

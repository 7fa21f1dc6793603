"""The buckets that carry desired and actual state, and the records kept in them.

One writer per bucket, so no two processes race on a key:
  DEPLOY_DESIRED  <site>.<agent> -> DesiredState   written by `gateway deploy rollout`
  DEPLOY_CONFIG   <site>.<agent> -> pushed config  written by `gateway deploy config`
  DEPLOY_STATUS   <site>.<agent> -> DeviceStatus   written by the device's supervisor
  FLEET_AGENTS    <site>.<agent> -> AgentState     written by the agent at each heartbeat
  DEPLOY_BUNDLES  object store: one signed bundle per version, named by the version
A config revision is the KV revision of its DEPLOY_CONFIG entry, so it only ever grows.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import orjson

from gateway import subjects
from gateway.errors import GatewayError

# The supervisor tells the agent it starts which bundle version it runs, for its heartbeat.
BUNDLE_VERSION_ENV = "GATEWAY_BUNDLE_VERSION"

DESIRED_BUCKET = "DEPLOY_DESIRED"
CONFIG_BUCKET = "DEPLOY_CONFIG"
STATUS_BUCKET = "DEPLOY_STATUS"
AGENTS_BUCKET = "FLEET_AGENTS"
BUNDLE_STORE = "DEPLOY_BUNDLES"

# DeviceStatus.state values
INSTALLING = "installing"
HEALTHY = "healthy"
REFUSED = "refused"  # bundle tampered, unsigned or unusable: never started
ROLLED_BACK = "rolled_back"  # started, failed its health check, previous version restored
FAILED = "failed"  # failed and nothing to roll back to
IDLE = "idle"  # no version installed yet


def device_key(site: str, agent: str) -> str:
    return f"{subjects.check_token('site', site)}.{subjects.check_token('agent', agent)}"


def split_key(key: str) -> tuple[str, str]:
    site, _, agent = key.partition(".")
    return site, agent


R = TypeVar("R", bound="_Record")


class _Record:
    """JSON encoding of a record dataclass; unknown fields (a newer writer) are ignored."""

    __slots__ = ()

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def decode(cls: type[R], data: bytes) -> R:
        try:
            doc = orjson.loads(data)
            fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
            return cls(**{k: v for k, v in doc.items() if k in fields})
        except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
            raise GatewayError(f"bad {cls.__name__} record: {exc}") from None


@dataclass(frozen=True, slots=True)
class DesiredState(_Record):
    version: str
    rollout: str = ""
    bundle_sha256: str = ""  # of the bundle file, as published
    updated_ns: int = 0
    force: bool = False  # an operator's downgrade (or a rollout's revert): allowed backwards


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Orders version labels: runs of digits as numbers (`1.10.0` after `1.9.0`), the
    rest as text, a number before text at the same place."""
    parts = re.findall(r"\d+|[^\d.+_-]+", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


@dataclass(frozen=True, slots=True)
class DeviceStatus(_Record):
    """What the supervisor reports: the version running and the last deployment outcome."""

    site: str
    agent: str
    state: str
    version: str = ""  # actually running
    target: str = ""  # the version last attempted
    error: str = ""
    failed: dict[str, str] = field(default_factory=dict)  # version -> why, not retried
    updated_ns: int = 0


@dataclass(frozen=True, slots=True)
class AgentState(_Record):
    """What the agent reports at each heartbeat: the actual state of the running agent."""

    site: str
    agent: str
    version: str
    pid: int
    ready: bool
    config_revision: int
    buffer_readings: int
    buffer_batches: int
    oldest_age_s: float | None
    dead_letters: int
    last_error: str
    time_ns: int


def decode_any(data: bytes) -> dict[str, Any]:
    doc = orjson.loads(data)
    if not isinstance(doc, dict):
        raise GatewayError("record is not a JSON object")
    return doc

"""Streams and buckets of the cloud tier, created idempotently from `StreamSettings`.

`ensure_streams` creates what is missing and applies changed limits to what exists (a
stream update that changes nothing is a no-op on the server); it never deletes data. It
returns what it did per stream/bucket, for `gateway cloud init` to report.
"""

from __future__ import annotations

from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError

from gateway import subjects
from gateway.config import StreamSettings

STATE_BUCKET = "AGG_STATE"  # aggregator checkpoints, one key per worker


def stream_configs(s: StreamSettings) -> list[StreamConfig]:
    def stream(name: str, subject: str, age: float, size: int) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=[subject],
            storage=StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window_s,
            max_age=age,
            max_bytes=size,
        )

    agg = stream(subjects.AGG_STREAM, "agg.>", s.agg_max_age_s, s.agg_max_bytes)
    # Direct gets: the views bisect AGG by them. Per-message TTLs: retention per width.
    agg.allow_direct = True
    agg.allow_msg_ttl = True
    return [
        stream(
            subjects.TELEMETRY_STREAM, "telemetry.>", s.telemetry_max_age_s, s.telemetry_max_bytes
        ),
        stream(subjects.DLQ_STREAM, "dlq.>", s.dlq_max_age_s, s.dlq_max_bytes),
        agg,
    ]


def ttl_headers(s: StreamSettings) -> dict[str, dict[str, str]]:
    """The `Nats-TTL` header of each window label's AGG records (`agg_retention_s`)."""
    return {label: {"Nats-TTL": str(round(age))} for label, age in s.agg_retention_s.items()}


def bucket_configs(s: StreamSettings) -> list[KeyValueConfig]:
    return [
        KeyValueConfig(bucket=name, history=1, replicas=s.replicas, storage=StorageType.FILE)
        for name in (subjects.LATEST_BUCKET, STATE_BUCKET)
    ]


def _differs(want: StreamConfig, have: StreamConfig) -> bool:
    fields = ("subjects", "num_replicas", "duplicate_window", "max_age", "max_bytes")
    if any(getattr(want, f) != getattr(have, f) for f in fields):
        return True
    return any(getattr(want, f) and not getattr(have, f) for f in ("allow_direct", "allow_msg_ttl"))


async def ensure_streams(
    js: JetStreamContext, settings: StreamSettings, *, update: bool = True
) -> dict[str, str]:
    """Create the streams and buckets, or apply changed settings; say what was done.

    Workers pass `update=False`: they create what is missing but leave the limits and
    replicas of existing streams to `gateway cloud init` (a worker started with a default
    config must not turn R3 streams into R1)."""
    done: dict[str, str] = {}
    for cfg in stream_configs(settings):
        assert cfg.name is not None
        try:
            info = await js.stream_info(cfg.name)
        except NotFoundError:
            await js.add_stream(cfg)
            done[cfg.name] = "created"
        else:
            if update and _differs(cfg, info.config):
                await js.update_stream(cfg)
                done[cfg.name] = "updated"
            else:
                done[cfg.name] = "unchanged" if update else "exists"
    for kv in bucket_configs(settings):
        try:
            await js.key_value(kv.bucket)
            done[kv.bucket] = "unchanged"
        except BucketNotFoundError:
            await js.create_key_value(kv)
            done[kv.bucket] = "created"
    return done

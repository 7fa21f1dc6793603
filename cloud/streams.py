"""Streams and buckets of the cloud tier, created idempotently."""

from __future__ import annotations

from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError

from gateway import subjects
from gateway.config import StreamSettings


def stream_configs(s: StreamSettings) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=subjects.TELEMETRY_STREAM,
            subjects=["telemetry.>"],
            storage=StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window_s,
            max_age=s.telemetry_max_age_s,
            max_bytes=s.telemetry_max_bytes,
        ),
        StreamConfig(
            name=subjects.DLQ_STREAM,
            subjects=["dlq.>"],
            storage=StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window_s,
            max_age=s.telemetry_max_age_s,
        ),
        StreamConfig(
            name=subjects.AGG_STREAM,
            subjects=["agg.>"],
            storage=StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window_s,
            max_age=s.agg_max_age_s,
        ),
    ]


async def ensure_streams(js: JetStreamContext, settings: StreamSettings) -> None:
    """Create the streams and the latest-values bucket, or apply changed settings."""
    for cfg in stream_configs(settings):
        assert cfg.name is not None
        try:
            await js.stream_info(cfg.name)
        except NotFoundError:
            await js.add_stream(cfg)
        else:
            await js.update_stream(cfg)
    try:
        await js.key_value(subjects.LATEST_BUCKET)
    except BucketNotFoundError:
        await js.create_key_value(
            KeyValueConfig(
                bucket=subjects.LATEST_BUCKET,
                history=1,
                replicas=settings.replicas,
                storage=StorageType.FILE,
            )
        )

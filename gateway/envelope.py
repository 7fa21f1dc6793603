"""The envelope of every message crossing edge to cloud: CloudEvents attributes in binary
mode (`ce-` prefixed NATS headers), a content type, and `Nats-Msg-Id` for deduplication."""

from __future__ import annotations

from datetime import UTC, datetime

BATCH_TYPE = "io.iot-gateway.telemetry.batch.v1"
DEAD_LETTER_TYPE = "io.iot-gateway.dead-letter.v1"
BATCH_SCHEMA = "https://iot-gateway.invalid/docs/wire-format.md#version-1"


def headers(
    *, event_id: str, source: str, event_type: str, content_type: str, time_ns: int | None = None
) -> dict[str, str]:
    """Headers for one message; `event_id` doubles as the JetStream dedupe id."""
    when = datetime.fromtimestamp((time_ns or 0) / 1e9, UTC) if time_ns else datetime.now(UTC)
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": source,
        "ce-type": event_type,
        "ce-time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "ce-dataschema": BATCH_SCHEMA,
        "Content-Type": content_type,
        "Nats-Msg-Id": event_id,
    }


def agent_source(site: str, agent: str) -> str:
    return f"/iot-gateway/{site}/{agent}"

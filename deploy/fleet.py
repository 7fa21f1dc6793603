"""`gateway fleet status`: one row per device from the desired and actual state buckets."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from nats.js.client import JetStreamContext
from rich.table import Table

from gateway import records
from gateway.errors import GatewayError
from gateway.kv_read import read_all, read_entries


@dataclass(frozen=True, slots=True)
class FleetRow:
    site: str
    agent: str
    online: bool
    heartbeat_age_s: float | None
    version_desired: str
    version_actual: str
    deploy_state: str
    config_desired: int
    config_actual: int
    buffer_readings: int
    oldest_age_s: float | None
    dead_letters: int
    last_error: str


def _decode(data: bytes) -> dict[str, Any]:
    try:
        return records.decode_any(data)
    except (GatewayError, ValueError):
        return {}


async def fleet_rows(js: JetStreamContext, offline_after_s: float = 10.0) -> list[FleetRow]:
    raw: dict[str, dict[str, bytes]] = {}
    for bucket in (
        records.DESIRED_BUCKET,
        records.CONFIG_BUCKET,
        records.STATUS_BUCKET,
        records.AGENTS_BUCKET,
    ):
        raw[bucket] = await read_all(js, bucket)
    config_rev = await _revisions(js)
    now = time.time_ns()
    rows = []
    for key in sorted(set(raw[records.STATUS_BUCKET]) | set(raw[records.AGENTS_BUCKET])):
        site, agent = records.split_key(key)
        desired = _decode(raw[records.DESIRED_BUCKET].get(key, b"{}"))
        status = _decode(raw[records.STATUS_BUCKET].get(key, b"{}"))
        actual = _decode(raw[records.AGENTS_BUCKET].get(key, b"{}"))
        age = (now - actual["time_ns"]) / 1e9 if "time_ns" in actual else None
        errors = [e for e in (status.get("error"), actual.get("last_error")) if e]
        rows.append(
            FleetRow(
                site=site,
                agent=agent,
                online=age is not None and age < offline_after_s,
                heartbeat_age_s=None if age is None else round(age, 1),
                version_desired=desired.get("version", ""),
                version_actual=status.get("version") or actual.get("version", ""),
                deploy_state=status.get("state", ""),
                config_desired=config_rev.get(key, 0),
                config_actual=int(actual.get("config_revision", 0)),
                buffer_readings=int(actual.get("buffer_readings", 0)),
                oldest_age_s=actual.get("oldest_age_s"),
                dead_letters=int(actual.get("dead_letters", 0)),
                last_error="; ".join(errors),
            )
        )
    return rows


async def _revisions(js: JetStreamContext) -> dict[str, int]:
    entries = await read_entries(js, records.CONFIG_BUCKET)
    return {key: entry.revision for key, entry in entries.items()}


def as_json(rows: list[FleetRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def render(rows: list[FleetRow]) -> Table:
    table = Table(title=f"fleet: {len(rows)} devices")
    for col in (
        "site",
        "agent",
        "online",
        "version (desired/actual)",
        "state",
        "config (d/a)",
        "buffered",
        "oldest",
        "dead letters",
        "last error",
    ):
        table.add_column(col)
    for r in rows:
        online = f"yes ({r.heartbeat_age_s}s)" if r.online else "NO"
        oldest = "-" if r.oldest_age_s is None else f"{r.oldest_age_s:.0f}s"
        table.add_row(
            r.site,
            r.agent,
            online,
            f"{r.version_desired or '-'}/{r.version_actual or '-'}",
            r.deploy_state,
            f"{r.config_desired}/{r.config_actual}",
            str(r.buffer_readings),
            oldest,
            str(r.dead_letters),
            r.last_error,
        )
    return table

"""`gateway deploy config --to PATTERN FILE`: push a config revision to devices.

Here the file is checked for what can be checked without a device (TOML, only pushable
tables); each agent then validates the values against its own version's schema and its
device's config, applies or rejects, and reports the outcome in FLEET_AGENTS.
"""

from __future__ import annotations

from nats.js.client import JetStreamContext

from deploy.targets import resolve
from gateway import records
from gateway.config import parse_overlay


async def push_config(js: JetStreamContext, pattern: str, text: str) -> dict[str, int]:
    """Put `text` for every matching device; return each device's new config revision."""
    parse_overlay(text)
    kv = await js.key_value(records.CONFIG_BUCKET)
    return {key: await kv.put(key, text.encode()) for key in await resolve(js, pattern)}

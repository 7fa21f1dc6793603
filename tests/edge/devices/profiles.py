"""Load a ready profile (config/devices/<name>.toml) as a test agent's config: its sources
and validation, pointed at the test's broker and cloud through the shared helper."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from gateway import config
from gateway.config import AgentConfig
from gateway.servers import NatsServer
from tests.edge.test_mqtt_source import make_config

PROFILE_DIR = Path(__file__).resolve().parents[3] / "config" / "devices"


def profile_doc(name: str) -> dict[str, Any]:
    return tomllib.loads((PROFILE_DIR / f"{name}.toml").read_text())


def profile_config(name: str, tmp_path: Path, cloud: NatsServer | None, port: int) -> AgentConfig:
    """The profile's config for a test agent; with no `cloud`, for decoding only (the
    config is never connected)."""
    doc = profile_doc(name)
    sources = [
        {**s, "url": f"mqtt://127.0.0.1:{port}", "client_id": f"gw-test-{name}-{i}"}
        for i, s in enumerate(doc["sources"])
    ]
    extra: dict[str, Any] = {"sources": sources, "validation": doc.get("validation", {})}
    if cloud is None:
        raw = {"site": "s1", "agent": "a1", "data_dir": str(tmp_path / "agent"), **extra}
        return config.parse(AgentConfig, raw)
    return make_config(tmp_path, cloud, port, **extra)

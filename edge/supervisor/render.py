"""The agent's effective config: the bundle's defaults with the device's own file over
them, validated, written as TOML to DIR/run/agent.toml before each start."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from gateway import config
from gateway.config import AgentConfig
from gateway.errors import ConfigError


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def render_agent_config(defaults: Path, device: Path, out: Path) -> AgentConfig:
    """Validate defaults+device as one AgentConfig and write it to `out` atomically."""
    doc = config.merged(read_toml(defaults), read_toml(device))
    cfg = config.parse(AgentConfig, doc, f"{device} over {defaults}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(dump_toml(cfg.model_dump(mode="json", exclude_none=True)))
    tmp.replace(out)
    return cfg


def dump_toml(doc: dict[str, Any]) -> str:
    """TOML for a config document: scalars, lists of scalars, tables, arrays of tables."""
    lines: list[str] = []
    _table(doc, [], lines)
    return "\n".join(lines) + "\n"


def _table(doc: dict[str, Any], path: list[str], lines: list[str]) -> None:
    nested = {k: v for k, v in doc.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in doc.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
    for k, v in doc.items():
        if k not in nested and k not in arrays:
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in nested.items():
        lines.append(f"\n[{'.'.join(_key(p) for p in [*path, k])}]")
        _table(v, [*path, k], lines)
    for k, items in arrays.items():
        for item in items:
            lines.append(f"\n[[{'.'.join(_key(p) for p in [*path, k])}]]")
            _table(item, [*path, k], lines)


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")

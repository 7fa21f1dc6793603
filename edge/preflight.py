"""Checks of the paths an agent's config names, before anything starts.

A path the agent cannot use would otherwise surface as a traceback from deep inside
SQLite or ssl, minutes into a start; here it is one `ConfigError` naming the key and the
path, which `gateway` prints as one line with exit code 2.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gateway.config import AgentConfig
from gateway.errors import ConfigError


def check_paths(cfg: AgentConfig) -> None:
    """`data_dir` must be a directory the agent can create and write in; the files the
    config names must be readable."""
    _writable_dir("data_dir", cfg.data_dir)
    buffer = cfg.data_dir / "buffer.sqlite3"
    if buffer.exists() and not os.access(buffer, os.R_OK | os.W_OK):
        raise ConfigError(f"data_dir: cannot read and write {buffer}")
    files = {"nats.creds_file": cfg.nats.creds_file, "nats.ca_file": cfg.nats.ca_file}
    files["catalog"] = cfg.catalog
    for key, path in files.items():
        if path is not None:
            _readable(key, path)


def _writable_dir(key: str, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # the one sure test, root or not
            pass
    except OSError as exc:
        raise ConfigError(f"{key}: cannot write in {path}: {_why(exc)}") from None


def _readable(key: str, path: Path) -> None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {_why(exc)}") from None


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)

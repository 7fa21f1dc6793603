"""Pushed config, applied by the running agent (`gateway deploy config`).

The agent follows its key in DEPLOY_CONFIG. A pushed document is TOML holding only the
tables that may change at run time (`sources`, `validation`, `filters`, `batch`,
`buffer.max_bytes`, `uplink`); it
is layered over the config the agent started with and validated as a whole. Valid: the
agent applies it in place (its buffer stays open) and keeps it in DATA/remote-config.json
so a restart starts from it. Invalid: rejected with the reason, the running config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from gateway import config
from gateway.config import AgentConfig, parse_overlay
from gateway.errors import ConfigError
from gateway.records import CONFIG_BUCKET, device_key

log = logging.getLogger(__name__)

STATE_FILE = "remote-config.json"
_RETRY_S = 10.0


def layered(base: AgentConfig, overlay: dict[str, Any], origin: str) -> AgentConfig:
    doc = config.merged(base.model_dump(mode="json", exclude_none=True), overlay)
    return config.parse(AgentConfig, doc, origin)


class RemoteConfig:
    def __init__(self, base: AgentConfig) -> None:
        self.base = base
        self.revision = 0
        self.error = ""
        self.path: Path = base.data_dir / STATE_FILE

    def load(self) -> AgentConfig:
        """The config to start with: the last accepted push over `base`, if any."""
        try:
            doc = orjson.loads(self.path.read_bytes())
            cfg = layered(self.base, parse_overlay(doc["toml"]), str(self.path))
        except FileNotFoundError:
            return self.base
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ConfigError) as exc:
            self.error = f"kept config revision ignored at start: {exc}"
            log.error("%s", self.error)
            return self.base
        self.revision = int(doc["revision"])
        return cfg

    def candidate(self, revision: int, text: str) -> AgentConfig | None:
        """The pushed revision as a whole config, or None with `error` saying why."""
        try:
            return layered(self.base, parse_overlay(text), f"config revision {revision}")
        except ConfigError as exc:
            self.error = f"config revision {revision} rejected: {exc}"
            log.error("%s; keeping revision %d", self.error, self.revision)
            return None

    def accepted(self, revision: int, text: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"revision": revision, "toml": text}))
        tmp.replace(self.path)
        self.revision = revision
        self.error = ""

    async def follow(self, nc: NatsClient, apply: Callable[[AgentConfig], Awaitable[None]]) -> None:
        """Apply each newer pushed revision, forever (returns only by cancellation). The
        cloud may be away for hours: that is retried here, never an error of the agent."""
        while True:
            try:
                await self._follow(nc, apply)
            except (NatsError, TimeoutError) as exc:
                log.warning(
                    "remote config: %s: %s; retrying in %.0fs", type(exc).__name__, exc, _RETRY_S
                )
            await asyncio.sleep(_RETRY_S)

    async def _follow(
        self, nc: NatsClient, apply: Callable[[AgentConfig], Awaitable[None]]
    ) -> None:
        js = nc.jetstream()
        try:
            kv = await js.key_value(CONFIG_BUCKET)
        except BucketNotFoundError:
            log.info("no %s bucket yet (gateway deploy init)", CONFIG_BUCKET)
            return
        watcher = await open_watch(kv, device_key(self.base.site, self.base.agent))
        try:
            async for entry in watcher:
                if entry is None or entry.operation is not None or not entry.value:
                    continue
                if entry.revision <= self.revision:
                    continue
                text = entry.value.decode(errors="replace")
                new = self.candidate(entry.revision, text)
                if new is not None:
                    await apply(new)
                    self.accepted(entry.revision, text)
                    log.info("applied config revision %d", entry.revision)
        finally:
            with contextlib.suppress(NatsError, TimeoutError):
                await watcher.stop()  # type: ignore[no-untyped-call]


async def open_watch(kv: KeyValue, key: str) -> KeyValue.KeyWatcher:
    """`kv.watch(key)`, safe to cancel: nats-py's watcher, cancelled while it is being set
    up, leaves a subscription whose callback blocks `drain()` for its whole timeout; so
    setup always completes, and on cancellation the watcher is stopped before re-raising."""
    setup = asyncio.ensure_future(kv.watch(key))
    try:
        return await asyncio.shield(setup)
    except asyncio.CancelledError:
        with contextlib.suppress(NatsError, TimeoutError):
            watcher = await setup
            await watcher.stop()  # type: ignore[no-untyped-call]
        raise

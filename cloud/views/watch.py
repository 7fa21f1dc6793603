"""`gateway watch`: a live terminal table of the latest window per series.

It follows the KV bucket of latest values, which the aggregator updates about once a
second for open windows and on every close.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cloud.records import WindowRecord
from cloud.views.live import CONSUMER_IDLE_S
from gateway import subjects

Latest = dict[str, WindowRecord]  # AGG_LATEST key -> its record


def render(latest: Latest, limit: int = 30, title: str = "latest aggregates") -> Table:
    table = Table(title=f"{title} ({len(latest)} series)", title_justify="left")
    for col in (
        "site",
        "device",
        "metric",
        "window",
        "start (UTC)",
        "count",
        "min",
        "mean",
        "max",
        "last",
        "unit",
        "state",
    ):
        table.add_column(
            col, justify="right" if col in ("count", "min", "mean", "max", "last") else "left"
        )
    rows = sorted(latest.values(), key=lambda r: (r.site, r.device, r.metric))
    for r in rows[:limit]:
        start = datetime.fromtimestamp(r.start_ns / 1e9, UTC).strftime("%H:%M:%S")
        table.add_row(
            r.site,
            r.device,
            r.metric,
            r.window,
            start,
            str(r.count),
            f"{r.min:.2f}",
            f"{r.mean:.2f}",
            f"{r.max:.2f}",
            f"{r.last:.2f}",
            r.unit,
            "closed" if r.closed else "open",
        )
    if len(rows) > limit:
        table.caption = f"... and {len(rows) - limit} more series"
    return table


async def follow_latest(
    nc: NatsClient, latest: Latest, changed: Callable[[], None], key_filter: str = ">"
) -> None:
    """Keep `latest` up to date from the KV bucket until cancelled."""
    js = nc.jetstream()
    while True:
        try:
            kv = await js.key_value(subjects.LATEST_BUCKET)
            break
        except BucketNotFoundError:
            await asyncio.sleep(0.5)
    watcher = await kv.watch(key_filter, inactive_threshold=CONSUMER_IDLE_S)  # gone soon after
    try:
        async for entry in watcher:
            if entry is None or entry.value is None:
                continue
            if entry.operation in ("DEL", "PURGE"):
                latest.pop(entry.key, None)
            else:
                latest[entry.key] = WindowRecord.from_json(entry.value)
            changed()
    finally:
        with contextlib.suppress(NatsError, TimeoutError):
            await watcher.stop()  # type: ignore[no-untyped-call]


async def watch(
    nc: NatsClient, console: Console, duration: float | None = None, key_filter: str = ">"
) -> None:
    """Show the live table in place until cancelled (or for `duration` seconds)."""
    latest: Latest = {}
    deadline = None if duration is None else time.monotonic() + duration
    with Live(render(latest), console=console, refresh_per_second=4) as live:
        follower = asyncio.create_task(
            follow_latest(nc, latest, lambda: live.update(render(latest)), key_filter),
            name="kv-follower",
        )
        try:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                if follower.done():
                    follower.result()
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

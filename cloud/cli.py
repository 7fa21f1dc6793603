"""`gateway cloud ...` and `gateway watch` commands."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from gateway import config
from gateway.cli import group
from gateway.connect import nats_connection
from gateway.runtime import run_until_signalled


def register(sub: Any) -> None:
    watch = sub.add_parser("watch", help="live table of the latest aggregates")
    watch.add_argument("--nats", default="nats://127.0.0.1:4222")
    watch.add_argument("--duration", type=float, default=None)
    watch.set_defaults(func=_watch)

    cloud = group(sub, "cloud", "cloud tier")
    for name, func, text in (
        ("aggregate", _cloud_aggregate, "run an aggregator worker"),
        ("init", _cloud_init, "create streams and buckets"),
    ):
        c = cloud.add_parser(name, help=text)
        c.add_argument("--config", type=Path, default=None)
        c.add_argument("--nats", default=None, help="NATS URL (overrides the config)")
        c.set_defaults(func=func)


def _cloud_config(args: argparse.Namespace) -> config.CloudConfig:
    cfg = config.load(config.CloudConfig, args.config) if args.config else config.CloudConfig()
    if args.nats:
        cfg = cfg.model_copy(update={"nats": config.NatsSettings(url=args.nats)})
    return cfg


def _cloud_aggregate(args: argparse.Namespace) -> int:
    from cloud.aggregator import Aggregator

    cfg = _cloud_config(args)

    async def service(stop: asyncio.Event) -> None:
        async with nats_connection(cfg.nats.url, "aggregator") as nc:
            await Aggregator(cfg).run(nc, stop)

    run_until_signalled(service)
    return 0


def _cloud_init(args: argparse.Namespace) -> int:
    from cloud.streams import ensure_streams

    cfg = _cloud_config(args)

    async def go() -> None:
        async with nats_connection(cfg.nats.url, "cloud-init") as nc:
            await ensure_streams(nc.jetstream(), cfg.streams)

    asyncio.run(go())
    print("streams and buckets are in place")
    return 0


def _watch(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cloud.views.watch import watch

    async def service(stop: asyncio.Event) -> None:
        async with nats_connection(args.nats, "watch") as nc:
            task = asyncio.create_task(watch(nc, Console(), args.duration))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            task.cancel()
            stopper.cancel()

    run_until_signalled(service)
    return 0

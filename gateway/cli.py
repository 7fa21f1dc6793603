"""The `gateway` command line. Each sub-command lives in its own module and registers here."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__, config
from gateway.errors import ConfigError, GatewayError
from gateway.runtime import run_until_signalled, setup_logging


def _edge_run(args: argparse.Namespace) -> int:
    from edge.agent import Agent

    cfg = config.load(config.AgentConfig, args.config)
    run_until_signalled(Agent(cfg).run)
    return 0


def _cloud_config(args: argparse.Namespace) -> config.CloudConfig:
    cfg = config.load(config.CloudConfig, args.config) if args.config else config.CloudConfig()
    if args.nats:
        cfg = cfg.model_copy(update={"nats": config.NatsSettings(url=args.nats)})
    return cfg


def _cloud_aggregate(args: argparse.Namespace) -> int:
    from cloud.aggregator import Aggregator
    from gateway.connect import nats_connection

    cfg = _cloud_config(args)

    async def service(stop: asyncio.Event) -> None:
        async with nats_connection(cfg.nats.url, "aggregator") as nc:
            await Aggregator(cfg).run(nc, stop)

    run_until_signalled(service)
    return 0


def _cloud_init(args: argparse.Namespace) -> int:
    from cloud.streams import ensure_streams
    from gateway.connect import nats_connection

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
    from gateway.connect import nats_connection

    async def service(stop: asyncio.Event) -> None:
        async with nats_connection(args.nats, "watch") as nc:
            task = asyncio.create_task(watch(nc, Console(), args.duration))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            task.cancel()
            stopper.cancel()

    run_until_signalled(service)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import DemoOptions, run_demo

    opts = DemoOptions(
        devices=args.devices,
        duration=args.duration,
        json=args.json,
        rate_hz=args.rate,
        data_dir=args.data_dir,
        keep=args.keep,
    )
    return run_demo(opts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="IoT edge-to-cloud ingestion gateway")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="fleet -> MQTT -> agent -> JetStream -> live aggregates")
    demo.add_argument("--devices", type=int, default=20, help="virtual devices (default 20)")
    demo.add_argument(
        "--duration", type=float, default=None, help="seconds of streaming; default: until Ctrl-C"
    )
    demo.add_argument("--rate", type=float, default=None, help="samples/s per device")
    demo.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on the last line"
    )
    demo.add_argument("--data-dir", type=Path, default=None, help="keep state here")
    demo.add_argument("--keep", action="store_true", help="keep the data directory")
    demo.set_defaults(func=_demo)

    watch = sub.add_parser("watch", help="live table of the latest aggregates")
    watch.add_argument("--nats", default="nats://127.0.0.1:4222")
    watch.add_argument("--duration", type=float, default=None)
    watch.set_defaults(func=_watch)

    edge = sub.add_parser("edge", help="edge agent").add_subparsers(dest="edge", required=True)
    run = edge.add_parser("run", help="run the agent")
    run.add_argument("--config", type=Path, required=True)
    run.set_defaults(func=_edge_run)

    cloud = sub.add_parser("cloud", help="cloud tier").add_subparsers(dest="cloud", required=True)
    for name, func, text in (
        ("aggregate", _cloud_aggregate, "run an aggregator worker"),
        ("init", _cloud_init, "create streams and buckets"),
    ):
        c = cloud.add_parser(name, help=text)
        c.add_argument("--config", type=Path, default=None)
        c.add_argument("--nats", default=None, help="NATS URL (overrides the config)")
        c.set_defaults(func=func)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except (ConfigError, GatewayError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

"""`gateway cloud ...`, `gateway watch` and `gateway query` commands."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gateway import config
from gateway.commands import group, nats_args, nats_settings
from gateway.connect import cli_settings, nats_connection
from gateway.errors import ConfigError
from gateway.runtime import first_of, run_until_signalled


def register(sub: Any) -> None:
    watch = sub.add_parser("watch", help="live table of the latest aggregates")
    nats_args(watch)
    _selector_args(watch)
    watch.add_argument("--duration", type=float, default=None)
    watch.set_defaults(func=_watch)

    query = sub.add_parser("query", help="window history from the AGG stream")
    nats_args(query)
    _selector_args(query)
    query.add_argument("--from", dest="start", default=None, help="ISO time or ns since epoch")
    query.add_argument("--to", dest="end", default=None, help="ISO time or ns (exclusive)")
    query.add_argument("--format", choices=("json", "csv"), default="json")
    query.add_argument(
        "--points",
        type=int,
        default=None,
        help="one series as chart-ready columns of about N points (JSON, as /api/series)",
    )
    query.set_defaults(func=_query)

    cloud = group(sub, "cloud", "cloud tier")
    for name, func, text in (
        ("aggregate", _cloud_aggregate, "run an aggregator worker"),
        ("init", _cloud_init, "create streams and buckets (idempotent)"),
        ("up", _cloud_up, "embedded nats-server + streams + aggregator workers + HTTP API"),
        ("serve", _cloud_serve, "HTTP JSON API (query + live server-sent events)"),
    ):
        c = cloud.add_parser(name, help=text)
        c.add_argument("--config", type=Path, default=None)
        nats_args(c, None)
        c.set_defaults(func=func)
        if name in ("aggregate", "up"):
            c.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics")
        if name == "aggregate":
            c.add_argument("--partition", default="0/1", help="this worker's share: I/N")
        if name == "up":
            c.add_argument("--workers", type=int, default=1)
            c.add_argument("--data-dir", type=Path, default=Path("var/cloud"))
            c.add_argument("--port", type=int, default=4222, help="NATS client port")
        if name in ("up", "serve"):
            c.add_argument("--http-port", type=int, default=8080, help="0 = no HTTP API")
            c.add_argument(
                "--allow-host", action="append", default=[], help="also accept this Host"
            )
            c.add_argument(
                "--host", default="127.0.0.1", help="HTTP bind address (not loopback: HTTPS only)"
            )
            c.add_argument("--tls-cert", type=Path, default=None, help="your own HTTPS cert")
            c.add_argument("--tls-key", type=Path, default=None, help="its private key")
        if name == "serve":
            c.add_argument("--data-dir", type=Path, default=Path("var/cloud"))

    enroll = cloud.add_parser("enroll", help="issue an agent's NATS credentials (.creds)")
    enroll.add_argument("--site", required=True)
    enroll.add_argument("--agent", required=True)
    enroll.add_argument("--data-dir", type=Path, default=Path("var/cloud"))
    enroll.add_argument("-o", "--output", type=Path, default=None, help="default: stdout")
    enroll.set_defaults(func=_enroll)
    revoke = cloud.add_parser("revoke", help="revoke an agent's credentials, no restart")
    revoke.add_argument("--site", required=True)
    revoke.add_argument("--agent", required=True)
    revoke.add_argument("--data-dir", type=Path, default=Path("var/cloud"))
    nats_args(revoke)
    revoke.set_defaults(func=_revoke)

    token = cloud.add_parser("token", help="HTTP API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="issue a token (printed once)")
    create.add_argument("--role", choices=("viewer", "admin"), required=True)
    create.add_argument("--data-dir", type=Path, default=Path("var/cloud"))
    create.set_defaults(func=_token_create)

    cluster = cloud.add_parser("cluster", help="local 3-node JetStream cluster")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    up = cluster_sub.add_parser("up", help="start 3 nats-server nodes, R3 streams; until Ctrl-C")
    up.add_argument("--data-dir", type=Path, default=Path("var/cluster"))
    up.add_argument("--config", type=Path, default=None)
    up.add_argument("--nats", default=None, help=argparse.SUPPRESS)
    up.add_argument("--ca", default=None, help=argparse.SUPPRESS)
    up.add_argument("--creds", default=None, help=argparse.SUPPRESS)
    up.set_defaults(func=_cluster_up)


def _selector_args(p: argparse.ArgumentParser) -> None:
    for name in ("site", "device", "metric", "window"):
        p.add_argument(f"--{name}", default=None, help=f"only this {name}")


def _cloud_config(args: argparse.Namespace, role: str = "admin") -> config.CloudConfig:
    """The config file's (or the default) settings, `--nats`/`--ca`/`--creds` over them,
    and the local ./var/cloud files for what neither gives (gateway.connect)."""
    cfg = config.load(config.CloudConfig, args.config) if args.config else config.CloudConfig()
    given = cfg.nats
    nats = cli_settings(
        args.nats or given.url, args.ca or given.ca_file, args.creds or given.creds_file, role
    )
    cfg = cfg.model_copy(update={"nats": nats})
    port = getattr(args, "metrics_port", None)
    if port is not None:
        agg = cfg.aggregator.model_copy(update={"metrics_port": port})
        cfg = cfg.model_copy(update={"aggregator": agg})
    return cfg


def _partition(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--partition {text!r}: expected I/N, e.g. 0/2") from None
    if not 0 <= i < n:
        raise ConfigError(f"--partition {text!r}: I must be in 0..N-1")
    return i, n


def _cloud_aggregate(args: argparse.Namespace) -> int:
    from cloud.aggregator import Aggregator

    cfg = _cloud_config(args, "aggregator")
    partition, partitions = _partition(args.partition)

    async def service(stop: asyncio.Event) -> None:
        async with nats_connection(cfg.nats, f"aggregator-{partition}of{partitions}") as nc:
            await Aggregator(cfg, partition, partitions).run(nc, stop)

    run_until_signalled(service)
    return 0


def _cloud_init(args: argparse.Namespace) -> int:
    from cloud.streams import ensure_streams

    cfg = _cloud_config(args)

    async def go() -> dict[str, str]:
        async with nats_connection(cfg.nats, "cloud-init") as nc:
            return await ensure_streams(nc.jetstream(), cfg.streams)

    for name, what in asyncio.run(go()).items():
        print(f"{name}: {what}")
    return 0


def _cloud_up(args: argparse.Namespace) -> int:
    from cloud.up import HttpOptions, run_cloud

    cfg = _cloud_config(args)
    hosts = _allowed_hosts(args)
    http = HttpOptions(args.host, args.tls_cert, args.tls_key)
    run_until_signalled(
        lambda stop: run_cloud(
            cfg, stop, args.data_dir, args.port, args.workers, args.http_port, hosts, http
        )
    )
    return 0


def _allowed_hosts(args: argparse.Namespace) -> frozenset[str]:
    from cloud.views.auth import DEFAULT_HOSTS

    return DEFAULT_HOSTS | {h.lower() for h in args.allow_host}


def _enroll(args: argparse.Namespace) -> int:
    from gateway.pki import write_private
    from gateway.security import CloudSecurity

    text = CloudSecurity.ensure(args.data_dir).trust.enroll(args.site, args.agent)
    if args.output:
        write_private(args.output, text.encode())
        print(f"wrote {args.output} (0600) for {args.site}/{args.agent}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from gateway.trust import Trust, agent_name, push_account

    trust = Trust(args.data_dir / "auth")
    account = trust.revoke(agent_name(args.site, args.agent))
    settings = cli_settings(args.nats, args.ca, trust.creds_path("sys"))
    if not args.ca:
        settings = settings.model_copy(update={"ca_file": args.data_dir / "tls" / "ca.pem"})
    asyncio.run(push_account(settings, account))
    print(f"revoked {args.site}/{args.agent}; the server has the new account JWT")
    return 0


def _token_create(args: argparse.Namespace) -> int:
    from cloud.up import api_tokens_file
    from cloud.views.auth import create_token

    record, token = create_token(api_tokens_file(args.data_dir), args.role)
    print(f"# token {record.id} (role {record.role}); shown once, keep it secret", file=sys.stderr)
    print(token)
    return 0


def _cloud_serve(args: argparse.Namespace) -> int:
    from cloud.httpd import check_bind, http_tls
    from cloud.up import api_tokens_file
    from cloud.views.auth import ApiAuth
    from cloud.views.http import serve

    cfg = _cloud_config(args, "views")
    hosts = _allowed_hosts(args)
    auth = ApiAuth.from_file(api_tokens_file(args.data_dir), hosts)
    tls = http_tls(args.data_dir, args.tls_cert, args.tls_key, tuple(sorted(hosts)))
    check_bind(args.host, tls)  # before connecting: a refusal is a usage error

    async def service(stop: asyncio.Event) -> None:
        async with nats_connection(cfg.nats, "cloud-http") as nc:
            live = cfg.views.live_max_clients
            await serve(nc, args.http_port, auth, stop, live, tls, args.host)

    run_until_signalled(service)
    return 0


def _cluster_up(args: argparse.Namespace) -> int:
    from cloud.up import run_cluster

    cfg = _cloud_config(args)
    run_until_signalled(lambda stop: run_cluster(cfg, stop, args.data_dir))
    return 0


def _watch(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cloud.views.query import Selector
    from cloud.views.watch import watch

    sel = Selector(args.site, args.device, args.metric, args.window)
    key_filter = sel.kv_key()

    async def service(stop: asyncio.Event) -> None:
        async with nats_connection(nats_settings(args, "views"), "watch") as nc:
            await first_of(watch(nc, Console(), args.duration, key_filter), stop.wait())

    run_until_signalled(service)
    return 0


def _query(args: argparse.Namespace) -> int:
    from cloud.records import WindowRecord
    from cloud.views.query import Selector, parse_time, query, to_csv, to_json

    sel = Selector(
        args.site,
        args.device,
        args.metric,
        args.window,
        parse_time(args.start) if args.start else None,
        parse_time(args.end) if args.end else None,
    )

    if args.points is not None:
        return _series(args, sel)

    async def go() -> list[WindowRecord]:
        async with nats_connection(nats_settings(args, "views"), "query") as nc:
            return await query(nc.jetstream(), sel)

    records = asyncio.run(go())
    sys.stdout.write(to_csv(records) if args.format == "csv" else to_json(records) + "\n")
    return 0


def _series(args: argparse.Namespace, sel: Any) -> int:
    from cloud.views.query import Series, series

    if not (sel.site and sel.device and sel.metric):
        raise ConfigError("--points: give --site, --device and --metric (one series)")

    async def go() -> Series:
        async with nats_connection(args.nats, "query") as nc:
            return await series(
                nc.jetstream(), sel.site, sel.device, sel.metric, sel.start_ns, sel.end_ns,
                args.points,
            )  # fmt: skip

    sys.stdout.write(asyncio.run(go()).to_json().decode() + "\n")
    return 0

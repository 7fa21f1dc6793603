"""`gateway deploy ...` and `gateway fleet status` commands."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import orjson
from nats.js.client import JetStreamContext

from deploy.systemd import AGENT_USER, DEFAULT_ROOT
from gateway.commands import group, nats_args, nats_settings
from gateway.connect import nats_connection

T = TypeVar("T")


def register(sub: Any) -> None:
    deploy = group(sub, "deploy", "build, publish and roll out agent versions and configs")

    p = deploy.add_parser("keygen", help="new ed25519 signing key pair")
    p.add_argument("--private", type=Path, default=Path("deploy-signing.key"))
    p.add_argument("--public", type=Path, default=Path("deploy-signing.pub"))
    p.set_defaults(func=_keygen)

    p = _with_nats(deploy.add_parser("init", help="create the deployment buckets and store"))
    p.add_argument("--replicas", type=int, default=1)
    p.set_defaults(func=_init)

    p = deploy.add_parser("bundle", help="build a signed offline bundle")
    p.add_argument("--version", required=True, help="version label, e.g. 1.4.0")
    p.add_argument("--key", type=Path, required=True, help="ed25519 private key (PEM)")
    p.add_argument("--out", type=Path, default=Path("dist"))
    p.add_argument("--project", type=Path, default=Path("."))
    p.add_argument("--project-wheel", type=Path, default=None)
    p.add_argument("--agent-config", type=Path, default=None, help="the bundle's agent defaults")
    p.add_argument(
        "--platform",
        action="append",
        dest="platforms",
        help="'host' or manylinux_2_<glibc>_<arch>; repeatable (default: host and "
        "manylinux_2_36_aarch64)",
    )
    p.add_argument(
        "--find-links",
        type=Path,
        action="append",
        default=[],
        help="install dependencies from this wheelhouse only (no index)",
    )
    p.set_defaults(func=_bundle)

    p = _with_nats(deploy.add_parser("publish", help="upload a bundle to the bundle store"))
    p.add_argument("bundle", type=Path)
    p.add_argument("--key", type=Path, required=True, help="ed25519 public key (PEM)")
    p.set_defaults(func=_publish)

    p = deploy.add_parser("bootstrap", help="write a device's one-time install script")
    p.add_argument("--site", required=True)
    p.add_argument("--agent", required=True)
    p.add_argument("--nats-url", required=True)
    p.add_argument("--creds", type=Path, default=None, help="from `gateway cloud enroll`")
    p.add_argument("--ca", type=Path, default=None, help="the cloud's CA (tls/ca.pem)")
    p.add_argument("--key", type=Path, required=True, help="ed25519 public key (PEM)")
    p.add_argument("--bundle", type=Path, required=True, help="first bundle to install")
    p.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    p.add_argument(
        "--topic",
        action="append",
        dest="topics",
        help="MQTT topic filter of the device's sensors; repeatable (default: sensors/#)",
    )
    p.add_argument("--root", type=PurePosixPath, default=DEFAULT_ROOT, help="install root")
    p.add_argument(
        "--agent-user", default=AGENT_USER, help="the account the agent runs as (not root)"
    )
    p.add_argument("-o", "--output", type=Path, default=None, help="default: stdout")
    p.set_defaults(func=_bootstrap)

    p = _with_nats(deploy.add_parser("rollout", help="move devices to a version in steps"))
    p.add_argument("--bundle", required=True, help="the published version")
    p.add_argument("--to", required=True, help="SITE_GLOB/AGENT_GLOB")
    p.add_argument("--canary", type=int, default=1)
    p.add_argument("--force", action="store_true", help="allow a downgrade")
    p.add_argument("--batch", type=float, default=100.0, help="percent of targets per step")
    p.add_argument("--step-timeout", type=float, default=300.0)
    p.set_defaults(func=_rollout)

    p = _with_nats(deploy.add_parser("config", help="push a config revision"))
    p.add_argument("--to", required=True, help="SITE_GLOB/AGENT_GLOB")
    p.add_argument("file", type=Path)
    p.set_defaults(func=_config)

    fleet = group(sub, "fleet", "fleet of edge devices")
    p = _with_nats(fleet.add_parser("status", help="every device: versions, health, buffer"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_fleet_status)


def _with_nats(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    nats_args(p)
    return p


def _with_js(args: argparse.Namespace, fn: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    async def go() -> T:
        async with nats_connection(nats_settings(args), "gateway-deploy") as nc:
            return await fn(nc.jetstream())

    return asyncio.run(go())


def _keygen(args: argparse.Namespace) -> int:
    from deploy.signing import generate_keypair

    generate_keypair(args.private, args.public)
    print(f"private key {args.private} (keep it secret), public key {args.public}")
    return 0


def _init(args: argparse.Namespace) -> int:
    from deploy.buckets import ensure_buckets

    _with_js(args, lambda js: ensure_buckets(js, args.replicas))
    print("deployment buckets and bundle store are in place")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from deploy.build import DEFAULT_PLATFORMS, BuildOptions, build_bundle

    path = build_bundle(
        BuildOptions(
            version=args.version,
            key=args.key,
            out_dir=args.out,
            project=args.project,
            project_wheel=args.project_wheel,
            platforms=tuple(args.platforms or DEFAULT_PLATFORMS),
            agent_config=args.agent_config,
            find_links=tuple(args.find_links),
        )
    )
    print(path)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from deploy.publish import publish_bundle

    version = _with_js(args, lambda js: publish_bundle(js, args.bundle, args.key))
    print(f"published {version}")
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    from deploy.bootstrap import BootstrapOptions, install_script

    script = install_script(
        BootstrapOptions(
            site=args.site,
            agent=args.agent,
            nats_url=args.nats_url,
            public_key=args.key.read_text(),
            bundle=args.bundle,
            creds=args.creds.read_text() if args.creds else "",
            ca=args.ca.read_text() if args.ca else "",
            mqtt_url=args.mqtt_url,
            topics=tuple(args.topics or ("sensors/#",)),
            root=args.root,
            agent_user=args.agent_user,
        )
    )
    if args.output:
        args.output.write_text(script)
        args.output.chmod(0o700)
    else:
        sys.stdout.write(script)
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from deploy.rollout import RolloutOptions, rollout

    opts = RolloutOptions(
        args.bundle, args.to, args.canary, args.batch, args.step_timeout, force=args.force
    )
    result = _with_js(args, lambda js: rollout(js, opts, say=print))
    print(f"rollout of {result.version} complete: {len(result.upgraded)} devices")
    return 0


def _config(args: argparse.Namespace) -> int:
    from deploy.config_push import push_config

    text = args.file.read_text()
    revisions = _with_js(args, lambda js: push_config(js, args.to, text))
    for key, rev in revisions.items():
        print(f"{key}: config revision {rev}")
    return 0


def _fleet_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from deploy.fleet import as_json, fleet_rows, render

    rows = _with_js(args, fleet_rows)
    if args.json:
        print(orjson.dumps(as_json(rows)).decode())
    else:
        Console().print(render(rows))
    return 0

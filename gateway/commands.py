"""What every area's command-line module shares: the sub-command groups of `gateway`.

Each area registers its own commands (`gateway edge ...`, `gateway cloud ...`) from its own
`cli` module; the application shell (`app.cli`) calls those `register` functions in order.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.config import NatsSettings

DEFAULT_NATS = "nats://127.0.0.1:4222"


def group(sub: Any, name: str, help_text: str = "") -> Any:
    """The sub-command group `name` (`gateway edge ...`), created on first use, so several
    modules can each add their own commands to one group."""
    groups: dict[str, Any] = sub.__dict__.setdefault("_gateway_groups", {})
    if name not in groups:
        parser = sub.add_parser(name, help=help_text or f"{name} commands")
        groups[name] = parser.add_subparsers(dest=f"{name}_command", required=True)
    return groups[name]


def nats_args(p: argparse.ArgumentParser, default_url: str | None = DEFAULT_NATS) -> None:
    """`--nats URL`, `--ca FILE`, `--creds FILE`: how a tool reaches the cloud (TLS +
    credentials; without `--ca`/`--creds`, the files `gateway cloud up` wrote under
    ./var/cloud)."""
    p.add_argument("--nats", default=default_url, help="NATS URL(s), comma-separated")
    p.add_argument("--ca", type=Path, default=None, help="CA of the server (PEM)")
    p.add_argument("--creds", type=Path, default=None, help="NATS credentials file")


def nats_settings(args: argparse.Namespace, role: str = "admin") -> NatsSettings:
    # imported here: gateway.connect loads nats-py, which commands that never reach the
    # cloud (`gateway edge run` parses its arguments first) need not pay for
    from gateway.connect import cli_settings

    return cli_settings(args.nats or DEFAULT_NATS, args.ca, args.creds, role)

"""The `gateway` command line.

Each area registers its own sub-commands from its own `cli` module (listed below), so the
command grows without one file knowing every part of the system.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from gateway import __version__
from gateway.errors import GatewayError
from gateway.runtime import setup_logging

# Modules with a `register(subparsers)` function, in the order their commands are listed.
COMMAND_MODULES = (
    "gateway.demo_cli",
    "edge.cli",
    "edge.decode_cli",
    "cloud.cli",
    "firmware_sim.cli",
    "gateway.verify_cli",
    "deploy.cli",
    "edge.supervisor.cli",
)


def group(sub: Any, name: str, help_text: str = "") -> Any:
    """The sub-command group `name` (`gateway edge ...`), created on first use, so several
    modules can each add their own commands to one group."""
    groups: dict[str, Any] = sub.__dict__.setdefault("_gateway_groups", {})
    if name not in groups:
        parser = sub.add_parser(name, help=help_text or f"{name} commands")
        groups[name] = parser.add_subparsers(dest=f"{name}_command", required=True)
    return groups[name]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="IoT edge-to-cloud ingestion gateway")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except GatewayError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

"""The `gateway` command line.

Each area registers its own sub-commands from its own `cli` module; this shell, on the top
floor, lists them in the order `gateway --help` shows them. The imports are plain ones so
the import graph shows every edge (tests/app/test_layers.py checks it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import firmware_sim.cli

import cloud.cli
import deploy.cli
import edge.cli
import edge.decode_cli
import edge.supervisor.cli
from app import demo_cli, verify_cli
from gateway import __version__
from gateway.errors import GatewayError
from gateway.runtime import setup_logging

# Each area's `register(subparsers)`, in the order their commands are listed.
REGISTRARS: tuple[Callable[[Any], None], ...] = (
    demo_cli.register,
    edge.cli.register,
    edge.decode_cli.register,
    cloud.cli.register,
    firmware_sim.cli.register,
    verify_cli.register,
    deploy.cli.register,
    edge.supervisor.cli.register,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="IoT edge-to-cloud ingestion gateway")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
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

"""The `gateway` command line.

Each area registers its own sub-commands from its own `cli` module; this shell, on the top
floor, lists them in the order `gateway --help` shows them. An area's module is imported
only when its commands are asked for (or for `--help`): `gateway edge run` then loads the
edge alone, not the cloud, deploy or fleet tools and what they import (the agent's
resident memory on a Pi; docs/benchmarks.md). The imports stay plain `import` statements,
inside the loaders, so the import graph shows every edge (tests/app/test_layers.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gateway import __version__
from gateway.errors import GatewayError
from gateway.runtime import setup_logging

Registrar = Callable[[Any], None]


def _demo() -> Registrar:
    from app import demo_cli

    return demo_cli.register


def _edge() -> Registrar:
    import edge.cli

    return edge.cli.register


def _decode() -> Registrar:
    import edge.decode_cli

    return edge.decode_cli.register


def _cloud() -> Registrar:
    import cloud.cli

    return cloud.cli.register


def _fleet() -> Registrar:
    import firmware_sim.cli

    return firmware_sim.cli.register


def _verify() -> Registrar:
    from app import verify_cli

    return verify_cli.register


def _deploy() -> Registrar:
    import deploy.cli

    return deploy.cli.register


def _supervisor() -> Registrar:
    import edge.supervisor.cli

    return edge.supervisor.cli.register


# Each area's loader and the top-level commands its `register` adds, in `--help` order.
REGISTRARS: tuple[tuple[Callable[[], Registrar], frozenset[str]], ...] = (
    (_demo, frozenset({"demo"})),
    (_edge, frozenset({"edge"})),
    (_decode, frozenset({"decode"})),
    (_cloud, frozenset({"watch", "query", "cloud"})),
    (_fleet, frozenset({"fleet"})),
    (_verify, frozenset({"verify"})),
    (_deploy, frozenset({"deploy", "fleet"})),
    (_supervisor, frozenset({"edge"})),
)


def _command(argv: Sequence[str]) -> str | None:
    """The top-level command named in `argv` (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or, given `argv` naming a known command, with only
    the areas that add to that command (what is unknown gets them all, for its error)."""
    p = argparse.ArgumentParser(prog="gateway", description="IoT edge-to-cloud ingestion gateway")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    command = None if argv is None else _command(argv)
    wanted = [load for load, names in REGISTRARS if command in names]
    for load in wanted or [load for load, _ in REGISTRARS]:
        load()(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except GatewayError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

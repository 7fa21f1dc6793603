"""`gateway edge ...` commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway import config
from gateway.cli import group
from gateway.runtime import run_until_signalled


def register(sub: Any) -> None:
    edge = group(sub, "edge", "edge agent")
    run = edge.add_parser("run", help="run the agent")
    run.add_argument("--config", type=Path, required=True)
    run.set_defaults(func=_edge_run)


def _edge_run(args: argparse.Namespace) -> int:
    from edge.agent import Agent

    cfg = config.load(config.AgentConfig, args.config)
    run_until_signalled(Agent(cfg).run)
    return 0

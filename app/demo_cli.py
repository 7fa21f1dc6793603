"""`gateway demo` command-line registration."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
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
    demo.add_argument(
        "--chaos",
        action="store_true",
        help="meanwhile SIGKILL the agent (also while it drains a backlog), restart the cloud"
        " server and MQTT broker, fill the agent's disk (root: a tmpfs) and publish oversized"
        " messages at random moments, with devices rebooting; the summary counts the faults",
    )
    demo.add_argument(
        "--packs",
        type=float,
        default=None,
        metavar="PERCENT",
        help="share of devices sending packs (JSON arrays and SenML); default 30 with --chaos",
    )
    demo.add_argument(
        "--pack-readings", type=int, default=100, help="readings per pack (default 100)"
    )
    demo.add_argument("--seed", type=int, default=None, help="seed of the chaos schedule")
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from app.demo import DemoOptions, run_demo

    opts = DemoOptions(
        devices=args.devices,
        duration=args.duration,
        json=args.json,
        rate_hz=args.rate,
        data_dir=args.data_dir,
        keep=args.keep,
        chaos=args.chaos,
        seed=args.seed,
        pack_percent=args.packs,
        pack_readings=args.pack_readings,
    )
    return run_demo(opts)

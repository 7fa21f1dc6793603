"""`gateway verify`: compare a fleet's ground truth with TELEMETRY and DLQ.

Exit 0 only when every valid reading is stored exactly once, unaltered, and every
deliberately invalid one is a dead letter and nothing else; 1 on any discrepancy.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from firmware_sim.ground_truth import GroundTruth

from gateway.commands import nats_args, nats_settings
from gateway.connect import nats_connection


def register(sub: Any) -> None:
    v = sub.add_parser("verify", help="compare a fleet's ground truth with TELEMETRY and DLQ")
    v.add_argument("--truth", type=Path, required=True, help="from `gateway fleet run --truth`")
    nats_args(v)
    v.add_argument("--site", default=None, help="only this site's subjects")
    v.add_argument("--no-dlq", action="store_true", help="check TELEMETRY only")
    v.add_argument("--wait", type=float, default=0.0, help="retry for up to S seconds")
    v.add_argument("--json", action="store_true", help="summary as JSON on the last line")
    v.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    from app.verify import Report

    truth = GroundTruth.load(args.truth)
    report: Report = asyncio.run(_verify_async(args, truth))
    bad = [d for d in report.devices if not d.ok]
    for d in bad[:20]:
        print(f"{d.site}/{d.device}: {_device_line(d)}", file=sys.stderr)
    if len(bad) > 20:
        print(f"... and {len(bad) - 20} more devices", file=sys.stderr)
    summary = report.summary() | {"ok": report.ok}
    print("  ".join(f"{k}={v}" for k, v in summary.items()), file=sys.stderr)
    if args.json:
        print(orjson.dumps(summary).decode())
    return 0 if report.ok else 1


async def _verify_async(args: argparse.Namespace, truth: GroundTruth) -> Any:
    from app.verify import compare, read_dead_letters, read_telemetry

    tele = f"telemetry.{args.site}.>" if args.site else "telemetry.>"
    dlq = f"dlq.{args.site}.>" if args.site else "dlq.>"
    deadline = time.monotonic() + args.wait
    async with nats_connection(nats_settings(args), "gateway-verify") as nc:
        js = nc.jetstream()
        while True:
            dead = None if args.no_dlq else await read_dead_letters(js, dlq)
            report = compare(truth, await read_telemetry(js, tele), dead)
            if report.ok or time.monotonic() >= deadline:
                return report
            await asyncio.sleep(1.0)


def _device_line(d: Any) -> str:
    fields = (
        "emitted", "stored", "missing", "duplicates", "unexpected", "altered",
        "invalid_stored", "dead_expected", "dead_missing", "dead_unexpected",
    )  # fmt: skip
    return " ".join(f"{f}={getattr(d, f)}" for f in fields if getattr(d, f))

"""`gateway fleet run`: summon a simulated fleet, with a live progress line and a summary.

    gateway fleet run --devices 1000 --types env_th,power_meter --broker mqtt://127.0.0.1:1883 \
        --profile chaos --duration 60 --seed 7 --truth truth.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import orjson

from gateway.commands import group
from gateway.errors import ConfigError
from gateway.runtime import run_until_signalled


def register(sub: Any) -> None:
    fleet = group(sub, "fleet", "simulated device fleets")
    run = fleet.add_parser("run", help="run a fleet of virtual devices")
    run.add_argument("--devices", type=int, default=10, help="how many (default 10)")
    run.add_argument(
        "--types", default="env_th", help="device types sharing --devices, comma-separated"
    )
    run.add_argument("--rate", type=float, default=None, help="samples/s per device")
    run.add_argument("--transport", choices=("mqtt", "mqtt-mux", "serial"), default="mqtt")
    run.add_argument("--qos", type=int, choices=(0, 1), default=1)
    run.add_argument(
        "--broker", default="mqtt://127.0.0.1:1883", help="MQTT broker URL (mqtts:// for TLS)"
    )
    run.add_argument("--ca", type=Path, default=None, help="mqtts: CA of the broker's cert")
    run.add_argument("--cert", type=Path, default=None, help="mqtts: the devices' client cert")
    run.add_argument("--key", type=Path, default=None, help="mqtts: its private key")
    run.add_argument("--profile", default="none", help="fault profile: none, flaky, chaos")
    run.add_argument("--duration", type=float, default=None, help="seconds; default until ^C")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--site", default="site1")
    run.add_argument("--truth", type=Path, default=None, help="write the ground truth here")
    run.add_argument("--ports-file", type=Path, default=None, help="serial: JSON device->pty")
    run.add_argument("--json", action="store_true", help="summary as JSON on the last line")
    run.set_defaults(func=_fleet_run)


def _settings(args: argparse.Namespace) -> Any:
    from firmware_sim.fleet import FleetSettings

    url = urlsplit(args.broker)
    if url.scheme not in ("mqtt", "mqtts", "tcp") or not url.hostname:
        raise ConfigError(f"--broker {args.broker!r}: expected mqtt://HOST:PORT or mqtts://")
    if args.devices < 1:
        raise ConfigError("--devices must be at least 1")
    if args.ports_file and args.transport != "serial":
        raise ConfigError("--ports-file needs --transport serial")
    return FleetSettings(
        host=url.hostname,
        port=url.port or (8883 if url.scheme == "mqtts" else 1883),
        tls=_tls(args) if url.scheme == "mqtts" else None,
        devices=args.devices,
        site=args.site,
        rate_hz=args.rate,
        seed=args.seed,
        transport=args.transport,
        qos=args.qos,
        profile=args.profile,
        types=tuple(t.strip() for t in args.types.split(",") if t.strip()),
    )


def _tls(args: argparse.Namespace) -> ssl.SSLContext:
    """The devices' TLS: the broker verified against --ca (or the system's CAs), with a
    client certificate if --cert and --key are given."""
    if (args.cert is None) != (args.key is None):
        raise ConfigError("--cert and --key go together")
    try:
        ctx = ssl.create_default_context(cafile=str(args.ca) if args.ca else None)
        if args.cert is not None:
            ctx.load_cert_chain(str(args.cert), str(args.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--ca/--cert/--key: cannot load: {exc}") from None
    return ctx


def _fleet_run(args: argparse.Namespace) -> int:
    from devices.catalog import load_catalog
    from firmware_sim.fleet import Fleet

    try:
        fleet = Fleet(_settings(args), load_catalog())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.transport == "serial":
        ports = [
            {"device": d, "path": p}
            for d, p in zip(fleet.device_names(), fleet.serial_ports(), strict=True)
        ]
        if args.ports_file:
            args.ports_file.write_bytes(orjson.dumps(ports, option=orjson.OPT_INDENT_2))
        for p in ports[:5]:
            print(f"{p['device']}: {p['path']}", file=sys.stderr)
    started = time.monotonic()

    async def service(stop: asyncio.Event) -> None:
        if args.duration is not None:
            asyncio.get_running_loop().call_later(args.duration, stop.set)
        async with asyncio.TaskGroup() as tg:
            progress = tg.create_task(_progress(fleet, sys.stderr), name="progress")
            try:
                await fleet.run(stop)
            finally:
                progress.cancel()

    run_until_signalled(service)
    summary = _summary(fleet, time.monotonic() - started)
    if args.truth:
        fleet.truth.save(args.truth)
    print("\n".join(f"{k:>16}: {v}" for k, v in summary.items() if k != "faults"), file=sys.stderr)
    print(f"{'faults':>16}: {summary['faults']}", file=sys.stderr)
    if args.json:
        print(orjson.dumps(summary).decode())
    return 0


def _line(fleet: Any, elapsed: float, rate: float) -> str:
    s, e = fleet.stats, fleet.engine.stats
    return (
        f"t={elapsed:5.0f}s  connected {s.connected}/{fleet.engine.devices}"
        f"  {rate:8.0f} readings/s  sent {e.readings}  invalid {e.invalid}"
        f"  faults {sum(e.faults.values())}  reconnects {s.retries}"
        f"  dropped {e.queue_dropped + e.reboot_lost}  late {e.late}"
    )


async def _progress(fleet: Any, out: TextIO) -> None:
    """A live line on a terminal; a line every 5 s otherwise."""
    tty = out.isatty()
    start = last_t = time.monotonic()
    last_n, printed = 0, start
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            n = fleet.engine.stats.readings
            line = _line(fleet, now - start, (n - last_n) / (now - last_t))
            last_n, last_t = n, now
            if tty:
                print("\r" + line, end="", file=out, flush=True)
            elif now - printed >= 5:
                print(line, file=out, flush=True)
                printed = now
    if tty:
        print(file=out)


def _summary(fleet: Any, elapsed: float) -> dict[str, Any]:
    e, truth = fleet.engine.stats, fleet.truth
    return {
        "devices": fleet.engine.devices,
        "seconds": round(elapsed, 2),
        "messages": e.messages,
        "readings": e.readings,
        "readings_per_s": round(e.readings / elapsed, 1) if elapsed else 0.0,
        "invalid": truth.invalid,
        "noise": len(truth.noise()),
        "queue_dropped": e.queue_dropped,
        "reboot_lost": e.reboot_lost,
        "reconnects": fleet.stats.retries,
        "late_sends": e.late,
        "max_lag_ms": round(e.max_lag_s * 1000, 1),
        "faults": dict(sorted(e.faults.items())),
    }

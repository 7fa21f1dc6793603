"""Fleet throughput: N devices at R Hz from one process pinned to one core.

    python -m bench.fleet --devices 10000 --rate 1 --duration 60

Runs the simulator (env_th devices: one JSON message of two readings per sample) against a
real Mosquitto (nats-server's MQTT listener if Mosquitto is missing) with QoS 1, all
devices multiplexed through one connection, and compares, side by side, the target rate
with the rate the broker acknowledged over the measured window. It reports CPU time of
this process as a share of one core, resident memory, and whether any device fell behind
its schedule (late sends, worst lag, messages still queued at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from firmware_sim.fleet import Fleet, FleetSettings

from devices.catalog import load_catalog
from gateway import process
from gateway.servers import NatsServer


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    messages: int
    readings: int
    cpu: float
    late: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _mosquitto() -> str | None:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return found if os.path.exists(found) else None


@asynccontextmanager
async def broker(root: Path) -> AsyncIterator[tuple[str, int]]:
    """Mosquitto on a free loopback port, or nats-server's MQTT listener without it."""
    binary = _mosquitto()
    if binary:
        port = _free_port()
        conf = root / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        proc = process.spawn([binary, "-c", str(conf)], root / "mosquitto.log")
        try:
            await _wait_listening(port)
            yield "mosquitto", port
        finally:
            process.stop(proc)
    else:
        async with NatsServer(root / "edge", name="bench-edge", mqtt=True) as server:
            yield "nats-server", server.mqtt_port


async def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _sample(fleet: Fleet, out: list[Sample], stop: asyncio.Event, warmup: float) -> None:
    """Counters once a second; the worst lag is reset when the measured window opens, so
    it and the late sends describe the window, not the start-up (a connect storm)."""
    window_open = time.monotonic() + warmup
    while not stop.is_set():
        e = fleet.engine.stats
        if window_open and time.monotonic() >= window_open:
            e.max_lag_s, window_open = 0.0, 0.0
        out.append(Sample(time.monotonic(), e.messages, e.readings, time.process_time(), e.late))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        async with broker(Path(tmp)) as (broker_name, port):
            settings = FleetSettings(
                port=port, devices=args.devices, rate_hz=args.rate, transport=args.transport,
                qos=1, seed=1, grace_s=5.0,
            )  # fmt: skip
            fleet = Fleet(settings, load_catalog())
            samples: list[Sample] = []
            stop, sampling = asyncio.Event(), asyncio.Event()
            asyncio.get_running_loop().call_later(args.warmup + args.duration, stop.set)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_sample(fleet, samples, sampling, args.warmup))
                await fleet.run(stop)
                sampling.set()
    return _result(args, fleet, samples, broker_name)


def _result(
    args: argparse.Namespace, fleet: Fleet, samples: list[Sample], broker_name: str
) -> dict[str, Any]:
    t0 = samples[0].t + args.warmup
    window = [s for s in samples if t0 <= s.t <= t0 + args.duration + 0.5]
    a, b = window[0], window[-1]
    secs = b.t - a.t
    target = args.devices * args.rate
    achieved = (b.messages - a.messages) / secs
    e = fleet.engine.stats
    backlog = sum(len(q) for q in fleet.engine.queues if q)
    return {
        "devices": args.devices,
        "rate_hz": args.rate,
        "broker": broker_name,
        "transport": args.transport,
        "window_s": round(secs, 1),
        "target_msgs_per_s": target,
        "achieved_msgs_per_s": round(achieved, 1),
        "achieved_readings_per_s": round((b.readings - a.readings) / secs, 1),
        "ratio": round(achieved / target, 4),
        "cpu_share_of_one_core": round((b.cpu - a.cpu) / secs, 3),
        "rss_mib": round(_rss_mib(), 1),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "late_sends": b.late - a.late,
        "max_lag_ms": round(e.max_lag_s * 1000, 1),
        "queued_at_end": backlog,
        "queue_dropped": e.queue_dropped,
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--cpu", type=int, default=0, help="pin to this core (-1: don't)")
    p.add_argument(
        "--transport", choices=("mqtt-mux", "mqtt"), default="mqtt-mux",
        help="one connection for all devices, or one per device",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    r = asyncio.run(bench(args))
    if args.json:
        print(orjson.dumps(r).decode())
        return 0
    print(f"{'':28}{'target':>12}{'achieved':>12}")
    print(f"{'messages/s':28}{r['target_msgs_per_s']:>12.0f}{r['achieved_msgs_per_s']:>12.1f}")
    print(f"{'ratio achieved/target':28}{'':>12}{r['ratio']:>12.4f}")
    for key in ("achieved_readings_per_s", "cpu_share_of_one_core", "rss_mib", "max_rss_mib",
                "late_sends", "max_lag_ms", "queued_at_end", "queue_dropped", "broker", "transport",
                "window_s", "cpu_affinity"):  # fmt: skip
        print(f"{key:28}{'':>12}{r[key]!s:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Backlog drain after an outage, and what buffering costs the disk.

N readings sit in the agent's durable buffer (as after an outage); the agent's uplink
forwards them to a real JetStream server (`Uplink.forward_remaining`: read, decompress,
mark attempted, pipelined `publish_async` under its own deadline, delete after PubAck).
The process keeps freed heap for reuse, as the agent does (edge/heap.py). The baseline, in
the same run against the same server, is a bare nats-py loop publishing the same batches
with the same headers from memory with `publish_async` and waiting for every PubAck: the
limit an uplink can approach. Rounds alternate. A round lasts under 0.1 s, so on a shared
machine single rounds are noisy: the ratio is taken from each side's best round (what the
code can do), and the ratio of the medians is reported beside it.

Disk: bytes the process caused to be written to storage (`write_bytes` in /proc/self/io,
which excludes sockets) while buffering the N readings and draining them, per reading,
against the encoded size of a reading on the wire.

With `--encrypt`, each round also fills and drains a buffer encrypted at rest (AES-GCM,
edge/buffer_cipher.py) beside the plain one: the cost of sealing (fill) and of opening
(drain) is reported as encrypted / plain, from each side's best round and from medians.

    python -m bench.drain [--readings 1000000] [--batch 1000] [--rounds 15] [--encrypt] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from nats.js.client import JetStreamContext

from cloud.streams import ensure_streams
from edge.buffer import PendingBatch, SourceCounts, SqliteBuffer
from edge.buffer_cipher import create_key_file
from edge.heap import retain_freed_heap
from edge.uplink import Uplink
from gateway import codec, envelope, subjects
from gateway.config import AgentConfig, StreamSettings
from gateway.connect import connect
from gateway.security import CloudSecurity
from gateway.servers import NatsServer

SITE, AGENT = "bench", "a1"


def make_batches(readings: int, per_batch: int, devices: int = 100) -> list[tuple[bytes, int]]:
    """Encoded batches of sensor-like readings: 2 metrics per device sampled at 1 Hz,
    smooth signal plus noise rounded to 3 decimals, as the simulated fleet sends."""
    rng = np.random.default_rng(1)
    t0 = 1_700_000_000_000_000_000
    out = []
    n = 0
    seq = Counter[str]()
    while n < readings:
        b = codec.ColumnBuilder(SITE, AGENT, capacity=per_batch)
        for i in range(min(per_batch, readings - n)):
            k = n + i
            device = f"dev-{(k // 2) % devices:05d}"
            metric, mean, amp = ("temp", 21.0, 3.0) if k % 2 == 0 else ("humidity", 45.0, 10.0)
            t = t0 + (k // (2 * devices)) * 1_000_000_000
            v = round(mean + amp * math.sin(k / 5000) + float(rng.normal(0, 0.2)), 3)
            seq[device] += 1
            b.add(device, metric, "Cel" if metric == "temp" else "%RH", v, t, seq[device])
        n += len(b)
        out.append((codec.encode(b.build()), len(b)))
    return out


def disk_written() -> int:
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["write_bytes"])


def fill(buf: SqliteBuffer, batches: list[tuple[bytes, int]]) -> None:
    for payload, n in batches:
        buf.commit(
            PendingBatch(codec.CONTENT_TYPE, n, payload),
            buf.next_batch_id(AGENT),
            [],
            None,
            SourceCounts(Counter({"bench": n})),
        )


async def drain_ours(nc: Any, buf: SqliteBuffer, cfg: AgentConfig) -> float:
    uplink = Uplink(cfg.site, cfg.agent, cfg.uplink, buf, asyncio.Event())
    started = time.perf_counter()
    await uplink.forward_remaining(nc, timeout=600)
    elapsed = time.perf_counter() - started
    assert buf.stats().batches == 0, "uplink did not drain the buffer"
    return elapsed


async def drain_bare(js: JetStreamContext, batches: list[tuple[bytes, int]], tag: str) -> float:
    subject = subjects.telemetry(SITE, AGENT)
    source = envelope.agent_source(SITE, AGENT)
    headers = [
        envelope.headers(
            event_id=f"{tag}:{i}",
            source=source,
            event_type=envelope.BATCH_TYPE,
            content_type=codec.CONTENT_TYPE,
            time_ns=time.time_ns(),
        )
        for i in range(len(batches))
    ]
    started = time.perf_counter()
    for (payload, _), hdrs in zip(batches, headers, strict=True):
        await js.publish_async(subject, payload, headers=hdrs)
    await js.publish_async_completed()
    return time.perf_counter() - started


async def buffered_round(
    nc: Any, batches: list[tuple[bytes, int]], cfg: AgentConfig, path: Path, key: Path | None
) -> tuple[float, float, int]:
    """Fill a fresh buffer with the batches, drain it: fill and drain seconds, bytes written."""
    buf = SqliteBuffer(path, max_bytes=1 << 40, key_file=key)
    buf.open()
    before = disk_written()
    started = time.perf_counter()
    fill(buf, batches)
    filled = time.perf_counter() - started
    drained = await drain_ours(nc, buf, cfg)
    buf.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    written = disk_written() - before
    buf.close()
    return filled, drained, written


def encrypted_vs_plain(
    readings: int, plain: list[tuple[float, float, int]], sealed: list[tuple[float, float, int]]
) -> dict[str, Any]:
    """Rates of the encrypted buffer and its ratios to the plain one (1.0: no cost)."""

    def best(rounds: list[tuple[float, float, int]], i: int) -> float:
        return min(r[i] for r in rounds)

    def median(rounds: list[tuple[float, float, int]], i: int) -> float:
        return statistics.median(r[i] for r in rounds)

    return {
        "encrypted_readings_per_s": round(readings / best(sealed, 1)),
        "encrypted_vs_plain_drain": round(best(plain, 1) / best(sealed, 1), 3),
        "encrypted_vs_plain_drain_medians": round(median(plain, 1) / median(sealed, 1), 3),
        "plain_fill_readings_per_s": round(readings / best(plain, 0)),
        "encrypted_fill_readings_per_s": round(readings / best(sealed, 0)),
        "encrypted_vs_plain_fill": round(best(plain, 0) / best(sealed, 0), 3),
        "encrypted_vs_plain_fill_medians": round(median(plain, 0) / median(sealed, 0), 3),
        "encrypted_disk_bytes_per_reading": round(median(sealed, 2) / readings, 2),
    }


async def run(
    readings: int, per_batch: int, rounds: int, root: Path, encrypt: bool = False
) -> dict[str, Any]:
    batches = make_batches(readings, per_batch)
    encoded = sum(len(b) for b, _ in batches)
    cfg = AgentConfig(site=SITE, agent=AGENT, data_dir=root / "agent")
    ours: list[float] = []
    bare: list[float] = []
    disk: list[int] = []
    plain: list[tuple[float, float, int]] = []
    sealed: list[tuple[float, float, int]] = []
    key = root / "keys" / "buffer.key"
    if encrypt:
        create_key_file(key)
    security = CloudSecurity.ensure(root / "cloud-security")  # TLS + JWT: the defaults
    async with NatsServer(root / "cloud", name="cloud", security=security) as server:
        nc = await connect(server.client(), "bench")
        js = nc.jetstream()
        await ensure_streams(js, StreamSettings())
        for r in range(rounds):
            await js.purge_stream(subjects.TELEMETRY_STREAM)
            bare.append(await drain_bare(js, batches, f"bare{r}"))
            await js.purge_stream(subjects.TELEMETRY_STREAM)
            plain.append(await buffered_round(nc, batches, cfg, root / f"buffer{r}.sqlite3", None))
            ours.append(plain[-1][1])
            disk.append(plain[-1][2])
            if encrypt:  # same batches, same server, right after the plain one
                await js.purge_stream(subjects.TELEMETRY_STREAM)
                path = root / f"sealed{r}.sqlite3"
                sealed.append(await buffered_round(nc, batches, cfg, path, key))
        await nc.close()
    ours_rate = readings / min(ours)
    bare_rate = readings / min(bare)
    ours_median = readings / statistics.median(ours)
    bare_median = readings / statistics.median(bare)
    extra = encrypted_vs_plain(readings, plain, sealed) if encrypt else {}
    return {
        "readings": readings,
        "batch": per_batch,
        "rounds": rounds,
        "ours_readings_per_s": round(ours_rate),
        "bare_nats_py_readings_per_s": round(bare_rate),
        "ratio": round(ours_rate / bare_rate, 3),
        "ours_median_readings_per_s": round(ours_median),
        "bare_median_readings_per_s": round(bare_median),
        "ratio_of_medians": round(ours_median / bare_median, 3),
        "encoded_bytes_per_reading": round(encoded / readings, 2),
        "disk_bytes_per_reading": round(statistics.median(disk) / readings, 2),
        "disk_vs_encoded": round(statistics.median(disk) / encoded, 3),
        **extra,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__.split("\n")[0])
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=1000, help="readings per batch")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--encrypt", action="store_true", help="also an encrypted buffer, side by side")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    retain_freed_heap()  # as `gateway edge run` does; both sides share this process
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        result = asyncio.run(run(args.readings, args.batch, args.rounds, Path(tmp), args.encrypt))
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        for k, v in result.items():
            print(f"{k:>30}: {v}")
    return result


if __name__ == "__main__":
    main()

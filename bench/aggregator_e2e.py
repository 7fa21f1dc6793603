"""End to end through JetStream: the aggregator worker vs a bare fetch-and-decode consumer.

    python -m bench.aggregator_e2e [--batches 300] [--per-batch 1000] [--agents 50]

Both read the same TELEMETRY messages from a real nats-server in one run: the baseline
only fetches, decodes and acknowledges (the limit for any consumer in Python); the worker
also aggregates the `--widths` windows (10 s and 1 min unless told) with every statistic,
publishes them to AGG and KV and checkpoints. Prints readings/s of each and the ratio, by
wall time and by this process's CPU time (`*_cpu*`).

Also the tracker alone (`tracker_*`): the same messages, decoded in advance, taken by
`Tracker.ingest` and `due_indexed` in fetch-sized chunks, no I/O, no records published,
no live view. `ceiling_vs_bare_cpu` is the worker's ratio if everything but the fetch
(which it pays as the bare consumer does) and the tracker cost nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from cloud.aggregator import Aggregator
from cloud.streams import ensure_streams
from cloud.tracker import Tracker
from gateway import codec, config, subjects
from gateway.config import CloudConfig, StreamSettings
from gateway.connect import connect
from gateway.security import CloudSecurity
from gateway.servers import NatsServer


class Message(NamedTuple):
    subject: str
    data: bytes
    msg_id: str


def messages(batches: int, per_batch: int, agents: int) -> list[Message]:
    """The TELEMETRY messages: agents in turn, one batch per agent and second, 20 devices."""
    rng = np.random.default_rng(1)
    t0 = 1_700_000_000 * 10**9
    out = []
    for i in range(batches):
        agent = f"a{i % agents}"
        b = codec.ColumnBuilder("s1", agent, f"{agent}-{i}", capacity=per_batch)
        base = t0 + (i // agents) * 10**9
        for j in range(per_batch):
            b.add(f"{agent}-d{j % 20}", "temp", "Cel", float(rng.normal()), base + j * 1000, j)
        out.append(
            Message(subjects.telemetry("s1", agent), codec.encode(b.build()), f"{agent}-{i}")
        )
    return out


async def fill(js: JetStreamContext, msgs: list[Message]) -> None:
    for m in msgs:
        await js.publish_async(m.subject, m.data, headers={"Nats-Msg-Id": m.msg_id})
    await js.publish_async_completed()


def tracker_alone(msgs: list[Message], widths: list[int], chunk: int) -> Rate:
    """`Tracker.ingest` and `due_indexed` on the messages, decoded in advance."""
    batches = [(m.subject, codec.decode(m.data)) for m in msgs]
    tracker = Tracker(widths, CloudConfig().aggregator.lateness_s)
    start = (time.perf_counter(), time.process_time())
    for lo in range(0, len(batches), chunk):
        for sseq, (subject, batch) in enumerate(batches[lo : lo + chunk], lo + 1):
            tracker.ingest(subject, sseq, batch)
        tracker.due_indexed(set())
    return rate(sum(len(b) for _, b in batches), start)


class Rate(NamedTuple):
    """Readings per second of wall time, and per second of this process's CPU time: the
    second is less moved by other work on a shared machine (the server runs apart)."""

    wall: float
    cpu: float


def rate(readings: int, start: tuple[float, float]) -> Rate:
    return Rate(
        readings / (time.perf_counter() - start[0]), readings / (time.process_time() - start[1])
    )


async def bare(js: JetStreamContext, messages: int) -> Rate:
    sub = await js.pull_subscribe(
        "telemetry.>", stream=subjects.TELEMETRY_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.ALL),
    )  # fmt: skip
    start, seen, readings = (time.perf_counter(), time.process_time()), 0, 0
    while seen < messages:
        msgs = await sub.fetch(256, timeout=5)
        for m in msgs:
            readings += len(codec.decode(m.data))
        seen += len(msgs)
        await msgs[-1].ack()
    await sub.unsubscribe()
    return rate(readings, start)  # as before: the unsubscribe counts


async def ours(nc: NatsClient, messages: int, readings: int, widths: list[int]) -> Rate:
    cfg = config.parse(CloudConfig, {"aggregator": {"idle_close_s": 3600, "windows_s": widths}})
    agg = Aggregator(cfg)
    stop = asyncio.Event()
    start = (time.perf_counter(), time.process_time())
    task = asyncio.create_task(agg.run(nc, stop))
    while agg.last_seq < messages:  # noqa: ASYNC110 - polling a counter, 10 ms resolution
        await asyncio.sleep(0.01)
    wall = rate(readings, start).wall
    # CPU until the worker has stopped: its last AGG records, checkpoint and live update
    # included. The live view is refreshed every `live_update_s` (1 s), about the length
    # of a run, so by wall time at `last_seq` a run may count no refresh at all; stopping
    # counts at least one. (Not in the wall figure: a stop waits out an idle fetch.)
    stop.set()
    await task
    return Rate(wall, rate(readings, start).cpu)


async def main(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        security = CloudSecurity.ensure(Path(tmp) / "security")  # TLS + JWT: the defaults
        async with NatsServer(Path(tmp), name="bench", security=security) as server:
            nc = await connect(server.client(), "bench")
            js = nc.jetstream()
            await ensure_streams(js, StreamSettings())
            msgs = messages(args.batches, args.per_batch, args.agents)
            await fill(js, msgs)
            readings = args.batches * args.per_batch
            base = await bare(js, args.batches)
            widths = [int(w) for w in args.widths.split(",")]
            mine = await ours(nc, args.batches, readings, widths)
            await nc.close()
    alone = tracker_alone(msgs, widths, CloudConfig().aggregator.fetch_batch)
    # The figures as before (wall time), then the same by CPU time of this process.
    return {"readings": readings, "bare_per_s": base.wall, "ours_per_s": mine.wall,
            "ours_vs_bare": mine.wall / base.wall, "bare_per_cpu_s": base.cpu,
            "ours_per_cpu_s": mine.cpu, "ours_vs_bare_cpu": mine.cpu / base.cpu,
            "tracker_per_cpu_s": alone.cpu, "tracker_vs_bare_cpu": alone.cpu / base.cpu,
            "ceiling_vs_bare_cpu": (1 / base.cpu) / (1 / base.cpu + 1 / alone.cpu)}  # fmt: skip


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--per-batch", type=int, default=1000)
    p.add_argument("--agents", type=int, default=50)
    p.add_argument(
        "--widths", default="10,60", help="window widths, s (the default config adds 3600,86400)"
    )
    result = asyncio.run(main(p.parse_args()))
    print(orjson.dumps(result).decode())

"""Exactness under failure: kill -9 of the aggregator, loss of a cluster node mid-ingest.

Each test compares every window in AGG with the plain-numpy recomputation from the raw
readings (`tests/cloud/reference.py`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext

from cloud.streams import ensure_streams
from gateway import codec, process, subjects
from gateway.config import StreamSettings
from gateway.connect import connect
from gateway.security import CloudSecurity
from gateway.servers import NatsCluster, NatsServer
from tests.cloud.reference import (
    distinct,
    make_batches,
    recompute,
    rows_of,
    stream_batches,
    stream_rows,
    with_copies,
)
from tests.cloud.test_aggregator import WIDTHS, cloud_config, running, wait_exact
from tests.helpers import cli_nats, cloud_security, eventually

ROLLUPS = [10, 60, 3600, 86400]  # with the 1 h and 1 d rollups, exact from the same readings
CONFIG = """
[aggregator]
windows_s = [10, 60, 3600, 86400]
lateness_s = 2
idle_close_s = 0.5
checkpoint_interval_s = 0.05
fetch_batch = 32
"""


async def publish_retrying(
    js: JetStreamContext, batches: list[tuple[str, str, codec.Batch]], timeout: float = 60
) -> None:
    """Publish each batch until acknowledged, keeping its `Nats-Msg-Id` (as the agent does)."""
    deadline = time.monotonic() + timeout
    for subject, msg_id, batch in batches:
        while True:
            try:
                await js.publish(
                    subject, codec.encode(batch), headers={"Nats-Msg-Id": msg_id}, timeout=2
                )
                break
            except (NatsError, TimeoutError):
                assert time.monotonic() < deadline, "the stream did not take the batches"
                await asyncio.sleep(0.2)


async def stored_messages(js: JetStreamContext) -> int:
    """Messages in TELEMETRY; -1 while the stream has no leader (retry)."""
    try:
        return int((await js.stream_info(subjects.TELEMETRY_STREAM)).state.messages)
    except (NatsError, TimeoutError):
        return -1


@pytest.mark.slow
async def test_kill_9_at_random_moments_leaves_every_window_exact(
    cloud_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    # A dedupe window far shorter than the test: exactness must not rest on it.
    await ensure_streams(js, StreamSettings(duplicate_window_s=1.0))
    rng = np.random.default_rng(9)
    # A third of the readings unnumbered; a third of the batches published twice under
    # different `Nats-Msg-Id`s (issue 12: an idempotent consumer).
    originals = make_batches(rng, agents=4, devices=5, seconds=240, batch_size=40, unnumbered=0.3)
    batches = with_copies(originals, rng)
    conf = tmp_path / "cloud.toml"
    conf.write_text(CONFIG)
    argv = [sys.executable, "-m", "app", "cloud", "aggregate",
            *cli_nats(cloud_server, "aggregator"), "--config", str(conf)]  # fmt: skip
    log = tmp_path / "aggregator.log"

    async def trickle() -> None:
        for lo in range(0, len(batches), 20):
            await publish_retrying(js, batches[lo : lo + 20])
            await asyncio.sleep(0.4)  # ingest spans the kills

    publisher = asyncio.create_task(trickle())
    kills = 0
    try:
        for _ in range(6):
            proc = process.spawn(argv, log)
            await asyncio.sleep(float(rng.uniform(0.8, 2.5)))  # a random moment, not a sync
            await asyncio.to_thread(process.kill, proc)
            kills += 1
        await publisher
        stored = await stream_batches(js)
        assert sorted(rows_of(stored)) == sorted(rows_of(b for _, _, b in batches))
        # From the raw TELEMETRY stream, each reading once by the documented identity.
        want = recompute(distinct(stored), ROLLUPS)
        assert want == recompute(rows_of(b for _, _, b in originals), ROLLUPS)
        proc = process.spawn(argv, log)
        try:
            await wait_exact(js, want, timeout=90)
        finally:
            await asyncio.to_thread(process.stop, proc)
    except AssertionError:
        print(process.tail(log, 40))
        raise
    assert kills == 6
    assert "replaying from stream sequence" in log.read_text(), "no restart resumed a checkpoint"
    info = await js.stream_info(subjects.DLQ_STREAM)
    assert info.state.messages == 0, "nothing was late: a restart must not make readings late"


@pytest.mark.slow
async def test_cluster_node_killed_mid_ingest_nothing_missing_windows_exact(
    tmp_path: Path,
) -> None:
    cluster = NatsCluster(tmp_path / "cluster", cloud_security(tmp_path))
    await cluster.start()
    clients: list[NatsClient] = []
    try:
        for _ in range(2):
            clients.append(await connect(cluster.client(), "test"))
        pub_nc, agg_nc = clients
        js = pub_nc.jetstream()
        await ensure_streams(js, StreamSettings(replicas=3))
        batches = make_batches(np.random.default_rng(11), agents=3, seconds=180, batch_size=40)
        async with running(agg_nc, cloud_config()) as agg:
            half = len(batches) // 2
            await publish_retrying(js, batches[:half])
            await eventually(lambda: asyncio.sleep(0, agg.last_seq), lambda s: s > 0)
            # Kill the node leading TELEMETRY: the worst one to lose.
            leader = (await js.stream_info(subjects.TELEMETRY_STREAM)).cluster
            names = [n.name for n in cluster.nodes]
            victim = names.index(leader.leader) if leader and leader.leader in names else 0
            await cluster.kill(victim)
            await publish_retrying(js, batches[half:])
            stored = await eventually(partial(stored_messages, js), lambda n: n >= 0)
            assert stored == len(batches), "nothing missing, nothing twice"
            rows = await stream_rows(js)
            assert sorted(rows) == sorted(rows_of(b for _, _, b in batches))
            await wait_exact(js, recompute(rows, WIDTHS), timeout=90)
    finally:
        for c in clients:
            await c.close()
        await cluster.stop()


@pytest.mark.slow
async def test_cluster_up_command_gives_r3_streams_and_stops_cleanly(tmp_path: Path) -> None:
    log = tmp_path / "cluster.log"
    argv = [sys.executable, "-m", "app", "cloud", "cluster", "up", "--data-dir",
            str(tmp_path / "cluster")]  # fmt: skip
    proc = process.spawn(argv, log)
    try:

        async def urls() -> str:
            for line in log.read_text().splitlines():
                if "R3 streams; --nats " in line:
                    return line.split("--nats ")[1].strip()
            return ""

        url = await eventually(urls, bool, timeout=60)
        settings = CloudSecurity.ensure(tmp_path / "cluster").settings(url)
        client = await connect(settings, "test")
        try:
            info = await client.jetstream().stream_info(subjects.TELEMETRY_STREAM)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        finally:
            await client.close()
    finally:
        code = await asyncio.to_thread(process.stop, proc, 30)
    assert code == 0, process.tail(log)

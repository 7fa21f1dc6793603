"""`/healthz` tells the truth (issue 12): not ready while a source is down or dead, or the
uplink stalls a backlog, with the reason in the JSON body; one log line per change of
state, never a traceback per retry. Real nats-server for the cloud and the edge broker."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
from nats.js.client import JetStreamContext

from cloud.streams import ensure_streams
from edge.agent import Agent
from gateway.config import StreamSettings
from gateway.connect import connect
from gateway.servers import NatsServer
from tests.edge.test_fuzz import http_get
from tests.edge.test_mqtt_source import make_config
from tests.helpers import eventually, json_payloads, publish_qos1


@contextlib.asynccontextmanager
async def started(agent: Agent) -> AsyncIterator[Agent]:
    """The agent running, ready or not (its metrics endpoint up)."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        # its port is 0 until the server is bound (the object exists before that)
        bound = _probe(lambda: agent.metrics_server is not None and agent.metrics_server.port)
        await eventually(bound, bool, timeout=20)
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def _probe(f: Any) -> Any:
    async def probe() -> Any:
        return f()

    return probe


async def health(agent: Agent) -> tuple[int, dict[str, Any]]:
    assert agent.metrics_server is not None
    status, body = await http_get(agent.metrics_server.port, "/healthz")
    return status, orjson.loads(body)


def _about(fragment: str) -> Any:
    return lambda r: r[0] == 503 and any(fragment in p for p in r[1]["problems"])


@contextlib.contextmanager
def captured_log() -> Iterator[io.StringIO]:
    """Everything logged, formatted as `gateway` formats it (tracebacks included)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setLevel(logging.INFO)  # `debug_lines` may open a logger to DEBUG meanwhile
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _lines(log: io.StringIO, fragment: str) -> list[str]:
    return [line for line in log.getvalue().splitlines() if fragment in line]


class _Counter(logging.Handler):
    def __init__(self, prefix: str) -> None:
        super().__init__(logging.DEBUG)
        self.prefix, self.count = prefix, 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.count += 1


@contextlib.contextmanager
def debug_lines(logger: str, prefix: str) -> Iterator[_Counter]:
    """Counts the debug lines of `logger` that start with `prefix` (one per retry), so a
    test waits for N retries instead of sleeping for them."""
    counter, target = _Counter(prefix), logging.getLogger(logger)
    old_level = target.level
    target.addHandler(counter)
    target.setLevel(logging.DEBUG)
    try:
        yield counter
    finally:
        target.removeHandler(counter)
        target.setLevel(old_level)


async def at_least(counter: _Counter, n: int, timeout: float) -> None:
    await eventually(lambda: asyncio.sleep(0, counter.count), lambda c: c >= n, timeout)


async def test_a_source_that_cannot_connect_is_not_ready_then_ready(
    tmp_path: Path, cloud_server: NatsServer, edge_broker: NatsServer
) -> None:
    port = edge_broker.mqtt_port
    await edge_broker.stop()
    cfg = make_config(tmp_path, cloud_server, port)
    with captured_log() as log, debug_lines("edge.sources.mqtt", "mqtt0: ") as retries:
        async with started(Agent(cfg)) as agent:
            _, body = await eventually(
                lambda: health(agent), _about("source mqtt0 is down: cannot connect to"), timeout=20
            )
            assert body["ready"] is False
            await at_least(retries, retries.count + 3, 30)  # several retries: still one line
            await edge_broker.start()
            _, body = await eventually(lambda: health(agent), lambda r: r[0] == 200, 30)
            assert body["ready"] is True and body["problems"] == []
    assert len(_lines(log, "source mqtt0 is down")) == 1, log.getvalue()
    assert len(_lines(log, "source mqtt0 is up again")) == 1, log.getvalue()
    assert "Traceback" not in log.getvalue()


async def test_a_source_whose_task_ended_is_dead(
    tmp_path: Path, cloud_server: NatsServer, edge_broker: NatsServer
) -> None:
    cfg = make_config(tmp_path, cloud_server, edge_broker.mqtt_port)
    with captured_log() as log:
        async with started(Agent(cfg)) as agent:
            await eventually(lambda: health(agent), lambda r: r[0] == 200, 20)
            task = next(t for t in asyncio.all_tasks() if t.get_name() == "mqtt-mqtt0")
            task.cancel()  # as if it had crashed: the agent must not go on saying ready
            _, body = await eventually(
                lambda: health(agent), _about("source mqtt0 is dead: its task"), 10
            )
            assert body["ready"] is False
    assert len(_lines(log, "source mqtt0 is dead")) == 1, log.getvalue()


async def test_an_uplink_that_stalls_a_backlog_is_not_ready_until_it_drains(
    tmp_path: Path, cloud_server: NatsServer, edge_broker: NatsServer
) -> None:
    """The cloud is up but has no TELEMETRY stream (nobody ran `cloud up`): every publish
    fails, the backlog stays; after `stall_after_s` the agent says so, once."""
    cfg = make_config(tmp_path, cloud_server, edge_broker.mqtt_port, uplink={"stall_after_s": 1.5})
    with captured_log() as log:
        async with started(Agent(cfg)) as agent:
            await eventually(lambda: health(agent), lambda r: r[0] == 200, 20)
            await asyncio.to_thread(
                publish_qos1, edge_broker.mqtt_port, "sensors/s1/d1", json_payloads("d1", range(50))
            )
            _, body = await eventually(lambda: health(agent), _about("uplink is stalled"), 20)
            assert body["buffer"]["batches"] > 0
            failed = body["uplink"]["publish_errors"]
            await eventually(  # publish retries go on: no more lines
                lambda: health(agent), lambda r: r[1]["uplink"]["publish_errors"] >= failed + 3, 30
            )
            nc = await connect(cloud_server.client("admin"), "test")
            try:
                js: JetStreamContext = nc.jetstream()
                await ensure_streams(js, StreamSettings())
            finally:
                await nc.close()
            _, body = await eventually(lambda: health(agent), lambda r: r[0] == 200, 30)
            assert body["buffer"]["batches"] == 0
    assert len(_lines(log, "uplink is stalled")) == 1, log.getvalue()
    assert len(_lines(log, "publish failed")) == 1, log.getvalue()
    assert len(_lines(log, "uplink is connected again")) == 1, log.getvalue()


async def test_an_unreachable_cloud_does_not_fill_the_log(
    tmp_path: Path, cloud_server: NatsServer, edge_broker: NatsServer
) -> None:
    """nats-py's default error callback logs a traceback for every reconnect attempt
    (every 0.5 s here, about 4 KB/s in the field): measured in bytes of log per minute."""
    cfg = make_config(tmp_path, cloud_server, edge_broker.mqtt_port)
    with captured_log() as log, debug_lines("edge.agent", "nats: ") as attempts:
        async with started(Agent(cfg)) as agent:
            await eventually(lambda: health(agent), lambda r: r[0] == 200, 20)
            before = len(log.getvalue())
            await cloud_server.stop()
            t0 = time.monotonic()
            await at_least(attempts, 24, 60)  # 24 failed reconnect attempts
            per_minute = (len(log.getvalue()) - before) * 60 / (time.monotonic() - t0)
            await cloud_server.start()
            await eventually(
                lambda: health(agent), lambda r: r[1]["uplink"] is not None and r[0] == 200, 30
            )
    text = log.getvalue()[before:]
    assert "Traceback" not in text, text
    assert per_minute < 1500, (per_minute, text)
    assert len(_lines(log, "uplink is disconnected")) == 1, text

"""10,000 mixed valid and invalid messages in three formats through a real broker, agent
and JetStream: every valid reading lands in TELEMETRY once, every invalid message is a
dead letter with the expected reason, and the agent's /metrics endpoint agrees."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import orjson
from nats.js.client import JetStreamContext

from app.verify import read_telemetry
from edge.agent import Agent
from gateway import subjects
from gateway.servers import NatsServer
from tests.edge.test_agent_integration import running
from tests.edge.test_mqtt_source import make_config
from tests.helpers import eventually, metric_samples, publish_qos1

MESSAGES = 10_000
DEVICES = 8


class Mix:
    """Deterministic messages per format topic, with the reason each bad one must get."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = time.time_ns()
        self.payloads: dict[str, list[bytes]] = {"json": [], "senml": [], "line": []}
        self.valid: set[tuple[str, int]] = set()
        self.reasons: Counter[str] = Counter()
        self.seq: Counter[str] = Counter()

    def build(self, n: int) -> None:
        for _ in range(n):
            fmt = self.rng.choice(("json", "senml", "line"))
            device = f"{fmt[0]}{self.rng.randrange(DEVICES)}"
            self.seq[device] += 1
            seq = self.seq[device]
            bad = self.rng.choice((None, None, None, "random", "range", "unit", "name", "shape"))
            self.payloads[fmt].append(self._payload(fmt, device, seq, bad))
            if bad is None:
                self.valid.add((device, seq))

    def _payload(self, fmt: str, device: str, seq: int, bad: str | None) -> bytes:
        if bad == "random":
            self.reasons["invalid_utf8" if fmt == "line" else "invalid_json"] += 1
            return b"\xff" + self.rng.randbytes(self.rng.randrange(1, 40))
        if bad in _VALIDATION_REASONS:
            self.reasons[_VALIDATION_REASONS[bad]] += 1
        elif bad == "shape":
            self.reasons[_SHAPE_REASONS[fmt]] += 1
        value = -100.0 if bad == "range" else round(self.rng.uniform(-40, 85), 3)
        unit = "lx" if bad == "unit" else "Cel"  # K would be converted
        dev = f"{device}.x" if bad == "name" else device
        return _ENCODERS[fmt](dev, seq, value, unit, self.now + seq, bad == "shape")


_VALIDATION_REASONS = {"range": "out_of_range", "unit": "unit_mismatch", "name": "invalid_device"}
_SHAPE_REASONS = {"json": "missing_field", "senml": "wrong_type", "line": "invalid_line"}


def _json(dev: str, seq: int, value: float, unit: str, t: int, broken: bool) -> bytes:
    doc = {"site": "s1", "device": dev, "metric": "temperature", "value": value, "unit": unit}
    doc |= {"time": t} if broken else {"time": t, "seq": seq}
    return orjson.dumps(doc)


def _senml(dev: str, seq: int, value: float, unit: str, t: int, broken: bool) -> bytes:
    bt = t // 10**9
    rec = {"bt": bt, "n": f"{dev}/temperature", "u": unit, "t": (t - bt * 10**9) / 1e9}
    rec |= {"v": "warm" if broken else value, "seq": seq}
    return orjson.dumps([rec])


def _line(dev: str, seq: int, value: float, unit: str, t: int, broken: bool) -> bytes:
    v = b"" if broken else repr(value).encode()
    return b"temperature,device=%s,unit=%s value=%s,seq=%di %d" % (
        dev.encode(),
        unit.encode(),
        v,
        seq,
        t,
    )


_ENCODERS = {"json": _json, "senml": _senml, "line": _line}


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    raw = await reader.read()
    writer.close()
    head, body = raw.split(b"\r\n\r\n", 1)
    return int(head.split(b" ")[1]), body


async def scrape(port: int) -> dict[str, float]:
    status, raw = await http_get(port, "/metrics")
    assert status == 200
    return metric_samples(raw.decode())


async def test_ten_thousand_mixed_messages_are_all_accounted_for(
    tmp_path: Path, edge_broker: NatsServer, cloud_server: NatsServer, js: JetStreamContext
) -> None:
    port = edge_broker.mqtt_port
    mix = Mix(seed=3)
    mix.build(MESSAGES)
    cfg = make_config(
        tmp_path,
        cloud_server,
        port,
        sources=[
            {"url": f"mqtt://127.0.0.1:{port}", "topics": [f"fuzz/{fmt}"], "format": fmt}
            for fmt in ("json", "senml", "line")
        ],
        batch={"max_readings": 1000, "linger_ms": 50},
    )
    async with running(Agent(cfg)) as agent:
        await asyncio.gather(
            *(
                asyncio.to_thread(publish_qos1, port, f"fuzz/{fmt}", payloads, f"pub-{fmt}")
                for fmt, payloads in mix.payloads.items()
            )
        )
        invalid = sum(mix.reasons.values())
        await eventually(
            lambda: js.stream_info(subjects.DLQ_STREAM),
            lambda i: i.state.messages >= invalid,
            timeout=60,
        )
        contents = await eventually(
            lambda: read_telemetry(js),
            lambda c: sum(len(a) for parts in c.seqs.values() for a in parts) >= len(mix.valid),
            timeout=60,
        )
        assert agent.metrics_server is not None
        metrics = await scrape(agent.metrics_server.port)
        status, health = await http_get(agent.metrics_server.port, "/healthz")
        assert status == 200 and orjson.loads(health)["ready"] is True
        assert (await http_get(agent.metrics_server.port, "/nope"))[0] == 404
    stored = {(dev, int(s)) for (_, dev), parts in contents.seqs.items() for a in parts for s in a}
    assert stored == mix.valid
    assert sum(len(a) for parts in contents.seqs.values() for a in parts) == len(mix.valid)
    assert agent.stats.dead_letters == mix.reasons
    assert (await js.stream_info(subjects.DLQ_STREAM)).state.messages == invalid
    assert invalid + len(mix.valid) == MESSAGES
    assert (
        sum(v for k, v in metrics.items() if k.startswith("gateway_agent_messages_total"))
        == MESSAGES
    )
    for reason, n in mix.reasons.items():
        assert metrics[f"gateway_agent_dead_letters_total{{reason={reason}}}"] == n, reason
    assert metrics["gateway_agent_readings_batched_total"] == len(mix.valid)

    # the store-and-forward account on /metrics (edge/forwarding_metrics.py) reconciles
    def total(prefix: str) -> float:
        return sum(v for k, v in metrics.items() if k.startswith(prefix))

    assert total("gateway_agent_source_unaccounted_readings{") == 0
    assert total("gateway_agent_source_published_readings_total{") + total(
        "gateway_agent_source_buffered_readings{"
    ) == len(mix.valid)
    assert total("gateway_agent_source_dead_lettered_total{") == invalid

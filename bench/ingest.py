"""Ingest benchmark: MQTT QoS 1 from Mosquitto into JetStream, side by side in one run.

    python -m bench.ingest [--messages 30000] [--packs 5000] [--pack-size 100] [--rounds 3]
                           [--json]

Every consumer drains the same kind of backlog: a persistent session is created, N
messages are published to it while the consumer is away, then the consumer connects and
the clock runs from its start until the last message is counted (bare subscriber) or
acknowledged by JetStream (naive bridge, agent). This isolates the consumer from the
publisher, which would otherwise share the CPU during the measurement.

  bare   paho-mqtt subscriber that only counts messages (the ceiling for any MQTT consumer)
  naive  the tutorial bridge: aiomqtt `async for message` -> `await js.publish()` each
  agent  our agent, one reading per message (JSON), into TELEMETRY in batches
  senml  our agent, SenML packs of `--pack-size` readings per message
  mapped our agent, Tasmota-shaped JSON (`{"Time":..,"AM2301-7":{"Temperature":..,
         "Humidity":..},"TempUnit":"C"}`) through config/devices/tasmota.toml's mapping
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud.streams import ensure_streams
from edge.agent import Agent
from gateway import config
from gateway.config import AgentConfig, NatsSettings, StreamSettings
from gateway.connect import connect
from gateway.pki import write_private
from gateway.security import CloudSecurity
from gateway.servers import NatsServer
from tests.mosquitto import Mosquitto

TOPIC = "bench/site1/dev-1"


def _client(client_id: str, clean: bool) -> mqtt.Client:
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean,
        protocol=mqtt.MQTTv311,
    )
    c.max_inflight_messages_set(1000)
    return c


def make_session(port: int, client_id: str) -> None:
    """Create a persistent session subscribed to TOPIC at QoS 1, then leave."""
    c = _client(client_id, clean=False)
    done = threading.Event()
    c.on_subscribe = lambda *_a: done.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(TOPIC, qos=1)
    if not done.wait(10):
        raise RuntimeError("subscription not acknowledged")
    c.disconnect()
    c.loop_stop()


def publish_all(port: int, payloads: list[bytes]) -> None:
    c = _client(f"bench-pub-{os.getpid()}", clean=True)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(TOPIC, p, qos=1) for p in payloads]
    infos[-1].wait_for_publish(120)
    for info in infos:
        info.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()


def bare_subscriber(port: int, client_id: str, n: int) -> float:
    """Seconds for a counting-only paho subscriber to take n messages from its session."""
    c = _client(client_id, clean=False)
    count = 0
    done = threading.Event()

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    c.on_message = on_message
    start = time.perf_counter()
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not done.wait(600):
        raise RuntimeError(f"bare subscriber got {count} of {n}")
    elapsed = time.perf_counter() - start
    c.disconnect()
    c.loop_stop()
    return elapsed


async def naive_bridge(port: int, client_id: str, nats: NatsSettings, n: int) -> float:
    nc = await connect(nats, "naive-bridge")
    js = nc.jetstream()
    start = time.perf_counter()
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=client_id, clean_session=False
    ) as client:
        await client.subscribe(TOPIC, qos=1)
        count = 0
        async for message in client.messages:
            await js.publish("telemetry.site1.naive", message.payload)
            count += 1
            if count == n:
                break
    elapsed = time.perf_counter() - start
    await nc.close()
    return elapsed


async def agent_run(cfg: AgentConfig, readings: int) -> float:
    agent = Agent(cfg)
    stop = asyncio.Event()
    start = time.perf_counter()
    task = asyncio.create_task(agent.run(stop))
    deadline = time.monotonic() + 600
    while agent.uplink.stats.readings_published < readings:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError(f"agent published {agent.uplink.stats.readings_published}")
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    stop.set()
    await task
    return elapsed


def agent_config(
    tmp: Path,
    name: str,
    port: int,
    cloud: NatsServer,
    fmt: str,
    mapping: dict[str, Any] | None = None,
) -> AgentConfig:
    """Agent `name`, enrolled with its own credentials (the secure defaults)."""
    assert cloud.security is not None
    creds = tmp / f"{name}.creds"
    write_private(creds, cloud.security.trust.enroll("site1", name).encode())
    nats = cloud.client().model_copy(update={"creds_file": creds})
    extra = {} if mapping is None else {"mapping": mapping}
    return config.parse(
        AgentConfig,
        {
            "site": "site1",
            "agent": name,
            "data_dir": str(tmp / name),
            "nats": nats.model_dump(mode="json"),
            "sources": [
                {
                    "url": f"mqtt://127.0.0.1:{port}",
                    "topics": [TOPIC],
                    "format": fmt,
                    "client_id": f"bench-{name}",
                    **extra,
                }
            ],
            "batch": {"max_readings": 10_000, "max_bytes": 4_000_000, "linger_ms": 20},
        },
    )


def json_messages(n: int) -> list[bytes]:
    now = time.time_ns()
    return [
        orjson.dumps(
            {
                "site": "site1",
                "device": f"dev-{i % 100}",
                "metric": "temperature",
                "value": 20.0 + i % 7,
                "unit": "Cel",
                "time": now + i,
                "seq": i // 100 + 1,
            }
        )
        for i in range(n)
    ]


# The Tasmota profile's mapping, on the benchmark's topic (device from the topic's last level).
TASMOTA_MAPPING: dict[str, Any] = {
    "topic_patterns": ["bench/{site}/{device}"],
    "device": "{device}-{top?}",
    "metric": "{key}",
    "time_path": "Time",
    "time_format": "iso8601",
    "units": {"C": "Cel", "F": "[degF]"},
    "metrics": {"temperature": {"unit_path": "TempUnit"}, "humidity": {"unit": "%RH"}},
}


def tasmota_messages(n: int) -> list[bytes]:
    """Tasmota `tele/<t>/SENSOR`-shaped messages: two readings each, 100 sensors."""
    t0 = time.time()
    out = []
    for i in range(n):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0 + i // 1000))
        stamp += f".{i % 1000:03d}"
        sensor = {"Temperature": 20.0 + i % 7, "Humidity": 40.0 + i % 11}
        out.append(orjson.dumps({"Time": stamp, f"AM2301-{i % 100}": sensor, "TempUnit": "C"}))
    return out


def senml_packs(n: int, size: int) -> list[bytes]:
    bt = time.time_ns() // 1_000_000_000
    return [
        orjson.dumps(
            [{"bn": f"dev-{p % 100}/", "bt": bt, "bu": "Cel"}]
            + [
                {
                    "n": "temperature",
                    "v": 20.0 + i % 7,
                    "t": i / 1000,
                    "seq": (p // 100) * size + i + 1,
                }
                for i in range(size)
            ]
        )
        for p in range(n)
    ]


Rates = dict[str, list[float]]  # scenario -> readings/s, one per round


async def measure(args: argparse.Namespace, tmp: Path) -> Rates:
    mosq = Mosquitto(tmp / "mosquitto", max_inflight=1000)
    security = CloudSecurity.ensure(tmp / "cloud-security")  # TLS + JWT: the defaults
    cloud = NatsServer(tmp / "cloud", name="cloud", security=security)
    await mosq.start()
    await cloud.start()
    nc = await connect(cloud.client(), "bench")
    await ensure_streams(nc.jetstream(), StreamSettings())
    await nc.close()
    port, n = mosq.port, args.messages
    rates: Rates = {"bare": [], "naive": [], "agent": [], "senml": [], "mapped": []}

    async def run(
        name: str,
        client_id: str,
        payloads: list[bytes],
        readings: int,
        consume: Coroutine[Any, Any, float],
    ) -> None:
        """Fill `client_id`'s session with `payloads`, then time `consume` (not started
        before it is awaited here) draining it."""
        await asyncio.to_thread(make_session, port, client_id)
        await asyncio.to_thread(publish_all, port, payloads)
        seconds = await consume
        rates[name].append(readings / seconds)
        print(
            f"{name:6} {len(payloads):>8} msgs {readings:>9} readings {seconds:7.2f} s "
            f"{readings / seconds:>10,.0f} readings/s",
            file=sys.stderr,
        )

    msgs = json_messages(n)
    packs = senml_packs(args.packs, args.pack_size)
    tasmota = tasmota_messages(n // 2)  # as many readings as the JSON scenario
    total = args.packs * args.pack_size
    try:
        # Rounds interleave the scenarios, so that a burst of load from elsewhere on a
        # shared machine hits all of them rather than one.
        for r in range(args.rounds):
            bare_id, naive_id = f"bench-bare-{r}", f"bench-naive-{r}"
            await run(
                "bare",
                bare_id,
                msgs,
                n,
                asyncio.to_thread(bare_subscriber, port, bare_id, n),
            )
            await run("naive", naive_id, msgs, n, naive_bridge(port, naive_id, cloud.client(), n))
            cfg = agent_config(tmp, f"agent{r}", port, cloud, "json")
            await run("agent", f"bench-agent{r}", msgs, n, agent_run(cfg, n))
            cfg = agent_config(tmp, f"senml{r}", port, cloud, "senml")
            await run("senml", f"bench-senml{r}", packs, total, agent_run(cfg, total))
            cfg = agent_config(tmp, f"mapped{r}", port, cloud, "mapped", TASMOTA_MAPPING)
            m = 2 * len(tasmota)
            await run("mapped", f"bench-mapped{r}", tasmota, m, agent_run(cfg, m))
    finally:
        await cloud.stop()
        await mosq.stop()
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=30_000)
    p.add_argument("--packs", type=int, default=5_000)
    p.add_argument("--pack-size", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        rates = asyncio.run(measure(args, Path(tmp)))
    rounds = range(args.rounds)
    summary = {
        "readings_per_s": rates,
        "median_readings_per_s": {k: statistics.median(v) for k, v in rates.items()},
        # Ratios within a round (same moment, same load), then their median.
        "agent_vs_bare": statistics.median(rates["agent"][r] / rates["bare"][r] for r in rounds),
        "agent_vs_naive": statistics.median(rates["agent"][r] / rates["naive"][r] for r in rounds),
        "senml_readings_per_s": statistics.median(rates["senml"]),
        # Mapped JSON (Tasmota-shaped, 2 readings a message) against our own JSON format.
        "mapped_vs_agent": statistics.median(
            rates["mapped"][r] / rates["agent"][r] for r in rounds
        ),
        "loadavg_1m": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    print(
        f"medians of {args.rounds} rounds: agent/bare = {summary['agent_vs_bare']:.2f} "
        f"(target >= 0.8)   agent/naive = {summary['agent_vs_naive']:.2f} (target >= 3)   "
        f"SenML x{args.pack_size}: {summary['senml_readings_per_s']:,.0f} readings/s "
        f"(target >= 300,000)   mapped/agent = {summary['mapped_vs_agent']:.2f} "
        f"(target >= 0.7)   load {summary['loadavg_1m']:.1f} on {summary['cpus']} CPUs",
        file=sys.stderr,
    )
    if args.json:
        print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

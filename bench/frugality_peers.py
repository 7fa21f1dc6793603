"""The other processes of bench/frugality.py: the fleet and the bare subscriber.

Kept apart from the benchmark so that the bare subscriber's process imports only paho
(what any MQTT consumer pays), not the agent's modules.

    python -m bench.frugality_peers publish --port P --scenario json-1k
    python -m bench.frugality_peers bare --port P
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

SITE = "site1"
TOPIC_ROOT = "frugal"
_TICK_S = 0.05  # the publisher's pacing step


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    devices: int
    rate_hz: float
    pack: int  # readings per message: 1 is one JSON reading, more is a SenML pack

    @property
    def messages_per_s(self) -> float:
        return self.devices * self.rate_hz


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("json-1k", 1000, 1.0, 1),
        Scenario("json-10k", 10_000, 0.1, 1),
        Scenario("senml", 1000, 0.1, 10),
    )
}


def client(client_id: str, clean: bool) -> mqtt.Client:
    """As bench/ingest.py's `_client`; not imported from there, which would load the
    agent's modules into the bare subscriber's process and inflate its memory."""
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean,
        protocol=mqtt.MQTTv311,
    )
    c.max_inflight_messages_set(1000)
    return c


def device_payload(s: Scenario, device: int, seq: int, now_ns: int) -> bytes:
    name = f"dev-{device:05d}"
    if s.pack == 1:
        return orjson.dumps(
            {
                "site": SITE,
                "device": name,
                "metric": "temperature",
                "value": 20.0 + (device + seq) % 17 / 4,
                "unit": "Cel",
                "time": now_ns,
                "seq": seq,
            }
        )
    # A pack of the last `pack` samples, one a second (bt in seconds, t relative).
    base = seq * s.pack
    bt = now_ns / 1e9 - (s.pack - 1)
    return orjson.dumps(
        [{"bn": f"{name}/", "bt": bt, "bu": "Cel"}]
        + [
            {"n": "temperature", "v": 20.0 + (device + i) % 17 / 4, "t": i, "seq": base + i}
            for i in range(s.pack)
        ]
    )


def run_publisher(port: int, s: Scenario) -> None:
    """Publish forever at the scenario's rate: each device at its own phase in the period."""
    c = client(f"frugal-pub-{os.getpid()}", clean=True)
    c.connect("127.0.0.1", port)
    c.loop_start()
    start = time.monotonic()
    sent = 0
    while True:
        due = int((time.monotonic() - start) * s.messages_per_s)
        now = time.time_ns()
        while sent < due:
            device, cycle = sent % s.devices, sent // s.devices
            topic = f"{TOPIC_ROOT}/{SITE}/dev-{device:05d}"
            c.publish(topic, device_payload(s, device, cycle + 1, now), qos=1)
            sent += 1
        next_due = start + (sent + 1) / s.messages_per_s
        time.sleep(max(0.0, min(_TICK_S, next_due - time.monotonic())))


def run_bare(port: int) -> None:
    """A counting-only QoS 1 subscriber (paho acknowledges on receipt). Prints `ready`
    once subscribed, then its count for every line read on stdin (a pipe: no disk)."""
    c = client(f"frugal-bare-{os.getpid()}", clean=True)
    count = 0
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        nonlocal count
        count += 1

    c.on_message = on_message
    c.on_subscribe = lambda *_a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(f"{TOPIC_ROOT}/#", qos=1)
    if not subscribed.wait(10):
        raise RuntimeError("bare subscriber: subscription not acknowledged")
    print("ready", flush=True)
    for _line in sys.stdin:
        print(count, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.frugality_peers")
    p.add_argument("role", choices=("publish", "bare"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--scenario", choices=tuple(SCENARIOS), default="json-1k")
    args = p.parse_args(argv)
    if args.role == "publish":
        run_publisher(args.port, SCENARIOS[args.scenario])
    else:
        run_bare(args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Helpers shared by integration tests: polling with a deadline, publishing readings."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import NatsSettings
from gateway.pki import write_private
from gateway.security import CloudSecurity
from gateway.servers import NatsCluster, NatsServer

T = TypeVar("T")


def cloud_security(tmp_path: Path) -> CloudSecurity:
    """The cloud tier's CA, certificates and identities for a test (made once per dir)."""
    return CloudSecurity.ensure(tmp_path / "cloud-security")


def enroll(server: NatsServer, site: str, agent: str) -> NatsSettings:
    """An agent's own connection settings: `gateway cloud enroll`'s creds + the CA."""
    assert server.security is not None, "the cloud server runs with security"
    path = server.data_dir / "enrolled" / f"{site}.{agent}.creds"
    write_private(path, server.security.trust.enroll(site, agent).encode())
    return server.client().model_copy(update={"creds_file": path})


def metric_samples(text: str) -> dict[str, float]:
    """Prometheus text as {"name{label=value}...": value}, labels sorted."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
            out[key] = s.value
    return out


async def eventually(
    probe: Callable[[], Awaitable[T]],
    ok: Callable[[T], bool],
    timeout: float = 20.0,
    interval: float = 0.1,
) -> T:
    """Poll `probe` until `ok(result)`; fail with the last result after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if ok(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last: {result!r}")
        await asyncio.sleep(interval)


async def worst_loop_stall(seconds: float) -> float:
    """The longest the event loop went without running this task, over `seconds`."""
    worst = 0.0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        before = time.monotonic()
        await asyncio.sleep(0.01)
        worst = max(worst, time.monotonic() - before)
    return worst


def reading(
    device: str,
    seq: int,
    value: float,
    metric: str = "temp",
    site: str = "s1",
    time_ns: int = 1_700_000_000_000_000_000,
) -> dict[str, object]:
    return {
        "site": site,
        "device": device,
        "metric": metric,
        "value": value,
        "unit": "Cel",
        "time": time_ns + seq,
        "seq": seq,
    }


def publish_qos1(port: int, topic: str, payloads: list[bytes], client_id: str = "test-pub") -> None:
    """Publish with QoS 1 and return once the broker has acknowledged every message."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(timeout=20)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def json_payloads(device: str, seqs: range, site: str = "s1") -> list[bytes]:
    return [orjson.dumps(reading(device, s, float(s), site=site)) for s in seqs]


def agent_nats(server: NatsServer, site: str = "s1", agent: str = "a1") -> dict[str, str]:
    """The `[nats]` table of an agent's config: enrolled as `site`/`agent`, TLS via the CA."""
    s = enroll(server, site, agent)
    return {"url": s.url, "ca_file": str(s.ca_file), "creds_file": str(s.creds_file)}


def cli_nats(server: NatsServer | NatsCluster, role: str = "admin") -> list[str]:
    """`--nats URL --ca CA --creds CREDS` for a `gateway ...` command run by a test."""
    s = server.client(role)
    return ["--nats", s.url, "--ca", str(s.ca_file), "--creds", str(s.creds_file)]


async def gateway(*args: str) -> tuple[int, str, str]:
    """Run `gateway ARGS...` (`python -m app`); its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()

"""MQTT sources over TLS, against a real Mosquitto whose only listener is TLS and requires
a client certificate (`require_certificate true`), with certificates made by gateway/pki.py.

Readings arrive with a client certificate; a broker certificate from another CA and a
missing client certificate are each refused with one clear line in the agent's status and
/healthz, while the agent keeps running. Bad TLS settings fail at load, naming the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from firmware_sim.fleet import Fleet, FleetSettings
from nats.js.client import JetStreamContext
from paho.mqtt.enums import CallbackAPIVersion

from devices.catalog import load_catalog
from edge.agent import Agent
from edge.sources.mqtt import MqttSource, broker_address
from gateway import config
from gateway.config import AgentConfig, MqttSourceSettings
from gateway.errors import ConfigError
from gateway.servers import NatsServer
from tests.conftest import mosquitto_binary
from tests.edge.test_agent_integration import _seqs_in_stream, running
from tests.edge.test_mqtt_source import make_config
from tests.helpers import eventually, json_payloads, worst_loop_stall
from tests.mosquitto import BrokerPki, Mosquitto, make_pki

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")


@pytest.fixture
def tls(tmp_path: Path) -> BrokerPki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
async def broker(tmp_path: Path, tls: BrokerPki) -> AsyncIterator[Mosquitto]:
    mosq = Mosquitto(tmp_path / "mosquitto", tls=tls)
    await mosq.start()
    try:
        yield mosq
    finally:
        await mosq.stop()


def tls_table(pki: BrokerPki, *, client: bool = True) -> dict[str, str]:
    table = {"ca_file": str(pki.ca)}
    if client:
        table |= {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    return table


def agent_config(tmp_path: Path, cloud: NatsServer, url: str, tls: dict[str, Any]) -> AgentConfig:
    source = {"url": url, "topics": ["sensors/#"], "tls": tls}
    return make_config(tmp_path, cloud, 0, sources=[source])


def device_context(pki: BrokerPki) -> ssl.SSLContext:
    """What a device holds: the broker's CA and its own client certificate."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


def publish_tls(port: int, pki: BrokerPki, topic: str, payloads: list[bytes]) -> None:
    """A device publishing over TLS with its client certificate, QoS 1, until acked."""
    ctx = device_context(pki)
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="dev-tls")
    client.tls_set_context(ctx)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for info in [client.publish(topic, p, qos=1) for p in payloads]:
            info.wait_for_publish(timeout=20)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.asynccontextmanager
async def started(agent: Agent) -> AsyncIterator[Agent]:
    """The agent running, whether or not its sources ever become ready."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await eventually(lambda: _sources(agent), lambda n: n > 0)
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert not task.cancelled() and task.exception() is None


async def _sources(agent: Agent) -> int:
    return len(agent.sources)


async def healthz(port: int) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)


async def test_readings_arrive_over_tls_with_a_client_certificate(
    tmp_path: Path,
    broker: Mosquitto,
    tls: BrokerPki,
    cloud_server: NatsServer,
    js: JetStreamContext,
) -> None:
    cfg = agent_config(tmp_path, cloud_server, broker.url, tls_table(tls))
    async with running(Agent(cfg)) as agent:
        assert agent.snapshot().last_error == ""
        payloads = json_payloads("d1", range(1, 101))
        await asyncio.to_thread(publish_tls, broker.port, tls, "sensors/s1/d1", payloads)
        seqs = await eventually(lambda: _seqs_in_stream(js), lambda s: len(s) >= 100)
    assert seqs == list(range(1, 101))


async def test_a_broker_certificate_from_another_ca_is_refused_in_the_status(
    tmp_path: Path, broker: Mosquitto, cloud_server: NatsServer
) -> None:
    other = make_pki(tmp_path / "other-pki")
    table = tls_table(other)  # our client cert is from the other CA too: the CA is the point
    cfg = agent_config(tmp_path, cloud_server, broker.url, table)
    async with started(Agent(cfg)) as agent:
        snap = await eventually(
            lambda: _snapshot(agent), lambda s: "not trusted" in s.last_error, timeout=20
        )
        assert "mqtt0" in snap.last_error and "ca_file" in snap.last_error
        assert not snap.ready
        assert agent.metrics_server is not None
        code, body = await healthz(agent.metrics_server.port)
        assert code == 503 and "not trusted" in body["last_error"]


async def test_a_missing_client_certificate_is_refused_in_the_status(
    tmp_path: Path, broker: Mosquitto, tls: BrokerPki, cloud_server: NatsServer
) -> None:
    cfg = agent_config(tmp_path, cloud_server, broker.url, tls_table(tls, client=False))
    async with started(Agent(cfg)) as agent:
        snap = await eventually(
            lambda: _snapshot(agent),
            lambda s: "requires a client certificate" in s.last_error,
            timeout=20,
        )
        assert not snap.ready and snap.last_error.startswith("mqtt0: ")


async def _snapshot(agent: Agent) -> Any:
    return agent.snapshot()


# -- validated at load ------------------------------------------------------------------------
def parse_source(source: dict[str, Any]) -> AgentConfig:
    return config.parse(AgentConfig, {"site": "s", "agent": "a", "sources": [source]}, "agent.toml")


def test_mqtts_without_a_tls_table_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"sources\.0: .*mqtts:// needs a \[sources\.tls\]"):
        parse_source({"url": "mqtts://broker:8883"})


def test_a_tls_table_needs_a_ca_or_the_system_store() -> None:
    with pytest.raises(ConfigError, match=r"sources\.0\.tls: .*set ca_file, or system_ca"):
        parse_source({"url": "mqtts://broker", "tls": {}})
    cfg = parse_source({"url": "mqtts://broker", "tls": {"system_ca": True}})
    assert cfg.sources[0].type == "mqtt" and broker_address(cfg.sources[0].url) == ("broker", 8883)


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=rf"sources\.0\.tls: .*ca_file '{missing}': cannot read"):
        parse_source({"url": "mqtts://b", "tls": {"ca_file": str(missing)}})


def test_an_unreadable_key_file_is_named(tmp_path: Path, tls: BrokerPki) -> None:
    tls.client_key.chmod(0o000)
    try:
        if tls.client_key.read_bytes():  # root reads anything: nothing to test then
            pytest.skip("running as root")
    except PermissionError:
        pass
    try:
        with pytest.raises(ConfigError, match=r"key_file .*: cannot read: Permission denied"):
            parse_source({"url": "mqtts://b", "tls": tls_table(tls)})
    finally:
        tls.client_key.chmod(0o600)


def test_a_cert_without_its_key_is_refused(tls: BrokerPki) -> None:
    table = {"ca_file": str(tls.ca), "cert_file": str(tls.client_cert)}
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        parse_source({"url": "mqtts://b", "tls": table})


def test_a_key_that_is_not_the_certificates_is_refused(tls: BrokerPki) -> None:
    table = tls_table(tls) | {"key_file": str(tls.server.key)}
    with pytest.raises(ConfigError, match="is not the key of cert_file"):
        parse_source({"url": "mqtts://b", "tls": table})


def test_a_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=rf"ca_file '{junk}': not a PEM certificate"):
        parse_source({"url": "mqtts://b", "tls": {"ca_file": str(junk)}})


async def test_the_firmware_simulator_publishes_over_tls_to_the_agent(
    tmp_path: Path, broker: Mosquitto, cloud_server: NatsServer, js: JetStreamContext
) -> None:
    """Both legs on TLS with client certificates: simulated devices -> Mosquitto -> agent."""
    tls = broker.tls
    assert tls is not None
    ctx = device_context(tls)
    settings = FleetSettings("127.0.0.1", broker.port, devices=3, site="s1", rate_hz=20.0, tls=ctx)
    fleet, stop = Fleet(settings, load_catalog()), asyncio.Event()
    cfg = agent_config(tmp_path, cloud_server, broker.url, tls_table(tls))
    async with running(Agent(cfg)):
        task = asyncio.create_task(fleet.run(stop))
        await eventually(lambda: _fleet_readings(fleet), lambda n: n >= 60)
        stop.set()
        await asyncio.wait_for(task, 30)
        sent = fleet.stats.readings
        seqs = await eventually(lambda: _seqs_in_stream(js), lambda s: len(s) >= sent)
    assert fleet.stats.retries == 0 and len(seqs) == sent


async def _fleet_readings(fleet: Fleet) -> int:
    return fleet.stats.readings


async def test_the_broker_is_checked_under_server_name_not_the_address(
    broker: Mosquitto, tls: BrokerPki
) -> None:
    """paho is handed the resolved address; the name checked is the configured one."""
    for name, ok in (("localhost", True), ("elsewhere.example", False)):
        table = tls_table(tls) | {"server_name": name}
        settings = parse_source({"url": broker.url, "tls": table}).sources[0]
        assert isinstance(settings, MqttSourceSettings)
        source = MqttSource("mqtt0", settings, f"gw-name-{ok}", lambda _m: None)
        await source.start()
        try:
            if ok:
                await asyncio.wait_for(source.ready.wait(), 20)
                assert source.last_error == ""
            else:
                await eventually(_last_error(source), lambda e: "Hostname mismatch" in e)
        finally:
            await source.stop()


def _last_error(source: MqttSource) -> Callable[[], Awaitable[str]]:
    async def probe() -> str:
        return source.last_error

    return probe


async def test_a_broker_that_never_answers_tls_does_not_block_the_loop(tls: BrokerPki) -> None:
    """It accepts TCP (the kernel completes the handshake from its backlog) but never
    says a word of TLS: paho's blocking handshake would freeze every source for 5 s."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        url = f"mqtts://127.0.0.1:{mute.getsockname()[1]}"
        settings = parse_source({"url": url, "tls": tls_table(tls)}).sources[0]
        assert isinstance(settings, MqttSourceSettings)
        source = MqttSource("mqtt0", settings, "gw-mute", lambda _m: None)
        await source.start()
        try:
            worst = await worst_loop_stall(2.0)
        finally:
            await source.stop()
    assert not source.connected and worst < 0.5, f"the loop stalled for {worst:.2f}s"

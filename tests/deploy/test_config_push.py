"""Config push: a running agent applies a valid revision in place and rejects an invalid
one, keeping its previous config, with the reason visible in `gateway fleet status`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from nats.js.client import JetStreamContext

from app.cli import main
from app.verify import read_telemetry
from deploy.buckets import ensure_buckets
from deploy.config_push import push_config
from deploy.fleet import FleetRow, fleet_rows
from edge.agent import Agent
from gateway.config import MqttSourceSettings
from gateway.errors import ConfigError
from gateway.servers import NatsServer
from tests.edge.test_agent_integration import agent_config, running
from tests.helpers import cli_nats, eventually, json_payloads, publish_qos1


async def _row(js: JetStreamContext) -> FleetRow | None:
    rows = await fleet_rows(js)
    return rows[0] if rows else None


async def _stored(js: JetStreamContext) -> int:
    contents = await read_telemetry(js)
    return sum(len(a) for parts in contents.seqs.values() for a in parts)


async def test_invalid_push_is_rejected_valid_push_applies_in_place(
    tmp_path: Path,
    cloud_server: NatsServer,
    edge_broker: NatsServer,
    js: JetStreamContext,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await ensure_buckets(js)
    cfg = agent_config(tmp_path, cloud_server, edge_broker.mqtt_port)
    async with running(Agent(cfg)) as agent:
        await eventually(lambda: _row(js), lambda r: r is not None and r.online)
        db = agent.buffer._db

        bad_file = tmp_path / "bad.toml"
        bad_file.write_text("[batch]\nmax_readings = 0\n")
        argv = ["deploy", "config", "--to", "s1/*", str(bad_file), *cli_nats(cloud_server)]
        assert await asyncio.to_thread(main, argv) == 0
        bad = {"s1.a1": int(capsys.readouterr().out.split()[-1])}
        row = await eventually(lambda: _row(js), lambda r: r is not None and bool(r.last_error))
        assert row is not None
        assert f"config revision {bad['s1.a1']} rejected" in row.last_error
        assert "batch.max_readings" in row.last_error
        assert row.config_desired == bad["s1.a1"] and row.config_actual == 0
        assert agent.config.batch.max_readings == 50  # the previous config runs on
        # The operator sees it in `gateway fleet status --json`.
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["fleet", "status", "--json", *cli_nats(cloud_server)])
        assert code == 0
        (status,) = orjson.loads(capsys.readouterr().out.splitlines()[-1])
        assert status["agent"] == "a1" and status["online"]
        assert (
            "batch.max_readings: Input should be greater than or equal to 1"
            in (status["last_error"])
        )
        payloads = json_payloads("d1", range(1, 21))
        await asyncio.to_thread(publish_qos1, edge_broker.mqtt_port, "sensors/s1/d1", payloads)
        await eventually(lambda: _stored(js), lambda n: n == 20)

        good = await push_config(
            js,
            "s1/a1",
            '[batch]\nmax_readings = 7\n\n[validation]\nout_of_range = "flag"\n\n'
            '[[sources]]\nurl = "mqtt://127.0.0.1:'
            f'{edge_broker.mqtt_port}"\ntopics = ["plant/#"]\n',
        )
        rev = good["s1.a1"]
        row = await eventually(lambda: _row(js), lambda r: r is not None and r.config_actual == rev)
        assert row is not None and row.last_error == ""
        assert agent.config.validation.out_of_range == "flag"
        assert agent.stats.readings == 20  # the rebuilt intake carries its counters on
        assert agent.batcher is not None and agent.batcher.settings.max_readings == 7
        assert agent.buffer._db is db  # the buffer was never reopened
        payloads = json_payloads("d2", range(1, 11))
        await asyncio.to_thread(publish_qos1, edge_broker.mqtt_port, "plant/s1/d2", payloads)
        await eventually(lambda: _stored(js), lambda n: n == 30)

    # A restart starts from the accepted revision, kept beside the buffer.
    async with running(Agent(cfg)) as again:
        assert again.remote.revision == rev
        assert again.config.batch.max_readings == 7
        source = again.config.sources[0]
        assert isinstance(source, MqttSourceSettings) and source.topics == ["plant/#"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('site = "other"\n', "site: is device-local"),
        ("[nats]\nurl = 'nats://x:1'\n", "nats: is device-local"),
        ('[buffer]\ndurability = "full"\n', "buffer.durability"),
        ("[batch\n", "not valid TOML"),
    ],
)
async def test_push_of_a_device_local_key_is_refused_before_sending(
    cloud_server: NatsServer, js: JetStreamContext, text: str, why: str
) -> None:
    await ensure_buckets(js)
    with pytest.raises(ConfigError, match=why):
        await push_config(js, "*/*", text)

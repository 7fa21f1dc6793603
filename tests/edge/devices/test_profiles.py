"""Every ready profile, fed its ecosystem's real payloads (tests/edge/devices/samples.py
names the source of each) on their real topics: first through the decoders and validation
alone, then through a real broker (nats-server's MQTT listener and Mosquitto) into a real
agent, checking every reading's site, device, metric, value, unit and time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.js.client import JetStreamContext

from devices.catalog import load_catalog
from edge.agent import Agent
from edge.decode_cli import subscribed
from edge.decoders import Context, build_decoder
from edge.errors import DecodeError
from edge.validation import Validator
from gateway.config import AgentConfig
from gateway.reading import Reading
from gateway.servers import NatsServer
from tests.edge.devices.profiles import PROFILE_DIR, profile_config
from tests.edge.devices.samples import ALL_SAMPLES, PROFILES, Expected, Sample
from tests.edge.devices.stream import stored_readings
from tests.edge.test_agent_integration import running
from tests.edge.test_mqtt_source import broker_port
from tests.helpers import eventually, publish_qos1

__all__ = ["broker_port"]  # the fixture: both edge brokers


def _decode(cfg: AgentConfig, sample: Sample, now: int) -> list[Reading]:
    """What the agent's intake does with one message, for the source whose topics match."""
    validator = Validator(load_catalog(), cfg.validation)
    for i, s in enumerate(cfg.sources):
        assert s.type == "mqtt"
        if not any(subscribed(t, sample.topic) for t in s.topics):
            continue
        decoder = build_decoder(f"sources.{i}.mapping", s.format, s.mapping)
        readings = decoder(sample.payload, Context.for_topic(cfg.site, sample.topic, now))
        return [validator.check(r, now).reading for r in readings]
    raise AssertionError(f"no source of {sample.profile} subscribes to {sample.topic}")


def _check(got: list[Reading], want: list[Expected], t0: int, t1: int) -> None:
    assert len(got) == len(want), [(r.device, r.metric) for r in got]
    key = lambda r: (r.device, r.metric)  # noqa: E731
    for r, e in zip(sorted(got, key=key), sorted(want, key=key), strict=True):
        assert (r.site, r.device, r.metric, r.unit) == ("s1", e.device, e.metric, e.unit)
        assert r.value == pytest.approx(e.value, rel=1e-12)
        if e.time_ns is None:
            assert t0 <= r.time_ns <= t1
        else:
            assert r.time_ns == e.time_ns
        assert r.flags == 0


@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda s: s.file)
def test_sample_decodes_as_documented(sample: Sample, tmp_path: Path) -> None:
    cfg = profile_config(sample.profile, tmp_path, None, 1883)
    now = time.time_ns()
    if sample.refused:
        with pytest.raises(DecodeError) as refused:
            _decode(cfg, sample, now)
        assert refused.value.reason == sample.refused
        return
    _check(_decode(cfg, sample, now), list(sample.readings), now, now)


def test_every_profile_loads_as_a_complete_agent_config() -> None:
    from gateway import config

    names = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
    assert set(PROFILES) <= set(names)
    for name in names:
        cfg = config.load(AgentConfig, PROFILE_DIR / f"{name}.toml")
        assert cfg.sources


@pytest.mark.parametrize("profile", PROFILES)
async def test_profile_through_a_real_broker_and_agent(
    profile: str,
    tmp_path: Path,
    broker_port: int,
    cloud_server: NatsServer,
    js: JetStreamContext,
) -> None:
    cfg = profile_config(profile, tmp_path, cloud_server, broker_port)
    samples = [s for s in ALL_SAMPLES if s.profile == profile]  # refused ones too: no reading
    want = [e for s in samples for e in s.readings]
    async with running(Agent(cfg)):
        t0 = time.time_ns()
        for i, s in enumerate(samples):
            await asyncio.to_thread(publish_qos1, broker_port, s.topic, [s.payload], f"dev-{i}")
        got = await eventually(lambda: stored_readings(js), lambda rs: len(rs) >= len(want))
        t1 = time.time_ns()
    _check(got, want, t0, t1)

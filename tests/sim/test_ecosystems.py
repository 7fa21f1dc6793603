"""The simulator's ecosystem devices (firmware_sim/ecosystems.py) decoded by the ready
profiles' own decoders and validation, without a broker: each good message gives exactly
the readings the ground truth records (named by metric, time and value), each bad one is
refused, so `gateway verify` can hold the agent to them."""

from __future__ import annotations

import time

import pytest
from firmware_sim.ecosystems import ECOSYSTEM_TYPES, truth_name
from firmware_sim.engine import DeviceSpec, Engine
from firmware_sim.firmware import FAULTS, Message
from firmware_sim.profiles import Profile
from firmware_sim.unnumbered import unnumbered_seq

from devices.catalog import load_catalog
from edge.decode_cli import subscribed
from edge.decoders import Context, Decoder, build_decoder
from edge.errors import DecodeError
from edge.validation import Validator
from gateway import config
from gateway.config import AgentConfig
from gateway.reading import Reading
from tests.edge.devices.profiles import profile_doc

PROFILE = {"tasmota_th": "tasmota", "zigbee_th": "zigbee2mqtt", "shelly_plug": "shelly",
           "sparkplug_th": "sparkplug"}  # fmt: skip
_BAD = {"garbage": 0.2, "nan": 0.2, "out_of_range": 0.2, "truncated": 0.2, "reboot": 0.05}
ALL_BAD = Profile.model_validate({"fleet_percent": 100, "faults": _BAD})


def _decoder(profile: str, topic: str) -> tuple[Decoder, AgentConfig]:
    doc = profile_doc(profile)
    cfg = config.parse(AgentConfig, {**doc, "validation": {}, "data_dir": "/nonexistent"})
    for i, s in enumerate(cfg.sources):
        assert s.type == "mqtt"
        if any(subscribed(t, topic) for t in s.topics):
            return build_decoder(f"sources.{i}.mapping", s.format, s.mapping), cfg
    raise AssertionError(f"{profile}: no source for {topic}")


@pytest.mark.parametrize("type_name", sorted(ECOSYSTEM_TYPES))
def test_each_message_decodes_to_its_ground_truth(type_name: str) -> None:
    start = time.time_ns() - 600 * 10**9
    engine = Engine(load_catalog(), [DeviceSpec(type_name, 3)], ALL_BAD, site="s1", seed=5,
                    start_ns=start)  # fmt: skip
    group = engine.groups[0]
    validator = Validator(load_catalog(), config.parse(AgentConfig, {
        "site": "s1", "agent": "a", "data_dir": "/x"}).validation)  # fmt: skip
    decoders: dict[str, Decoder] = {}
    good = bad = 0
    for r in range(40):  # rounds
        group.prepare(r)
        for i in range(group.n):
            faults = group.hits(i) - {"duplicate"}
            if "reboot" in faults:
                group.reboot(i)
            for msg in group.messages(i, faults):
                got = _decode(decoders, PROFILE[type_name], msg, validator)
                if msg.noise:
                    assert got is None, (msg.topic, msg.payload)
                    bad += 1
                    continue
                assert got is not None, (msg.topic, msg.payload)
                device = truth_name(group, group.names[i])
                assert {r.device for r in got} == {device}
                named = sorted(unnumbered_seq(x.metric, x.time_ns, x.value) for x in got)
                assert named == sorted(msg.seqs)
                good += 1
    assert good > 50 and bad > 20
    assert set(FAULTS) >= set(_BAD)


def _decode(
    decoders: dict[str, Decoder], profile: str, msg: Message, validator: Validator
) -> list[Reading] | None:
    topic = msg.topic.decode()
    key = topic.split("/")[0] if profile == "sparkplug" else topic
    if key not in decoders:
        decoders[key] = _decoder(profile, topic)[0]
    now = time.time_ns()
    try:
        readings = decoders[key](msg.payload, Context.for_topic("s1", topic, now))
        return [validator.check(x, now).reading for x in readings]
    except DecodeError:
        return None

"""Privacy rules of a source (`[sources.privacy]`): devices and metrics dropped by pattern,
values coarsened, before validation and before anything is stored; counted as the
`privacy` filter; the same on the reading-by-reading and the column (pack) path.

The OwnTracks sample is the location message of the OwnTracks booklet, `docs/tech/json.md`
(tests/edge/devices/samples/16-owntracks-location.json).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson
import pytest

from devices.catalog import load_catalog
from edge.batcher import Batcher, Flush
from edge.filters import Privacy
from edge.intake import Intake
from edge.metrics import AgentMetrics
from edge.sources import SourceMessage
from gateway import codec, config
from gateway.config import AgentConfig, PrivacySettings
from gateway.errors import ConfigError
from gateway.reading import Reading
from tests.edge.devices.profiles import profile_doc
from tests.edge.devices.samples import SAMPLES

NOW = time.time_ns()
S = 1_000_000_000


def intake_for(source: dict[str, Any], columns: bool = True) -> tuple[Intake, AgentMetrics]:
    cfg = config.parse(AgentConfig, {"site": "s1", "agent": "a1", "sources": [source]})
    metrics = AgentMetrics()
    intake = Intake(cfg, load_catalog(), metrics)
    if not columns:  # the same intake, forced onto the reading-by-reading path
        plan = intake._plans["mqtt0"]
        intake._plans["mqtt0"] = dataclasses.replace(plan, columns=None)
    return intake, metrics


def feed(intake: Intake, topic: str, *payloads: bytes) -> Flush:
    batcher = Batcher("s1", "a1", config.BatchSettings())
    for p in payloads:
        intake.handle(SourceMessage("mqtt0", topic, p, None, NOW), batcher)
    flush = batcher.take("b")
    assert flush is not None
    return flush


def stored(flush: Flush) -> list[tuple[str, str, float]]:
    if flush.batch is None:
        return []
    readings = codec.decode(flush.batch.payload).readings()
    return sorted((r.device, r.metric, r.value) for r in readings)


def test_owntracks_location_is_coarsened_and_the_battery_dropped() -> None:
    doc = profile_doc("owntracks")
    source = doc["sources"][0] | {
        "privacy": {"round": {"latitude": 2, "longitude": 2}, "drop_metrics": ["battery"]}
    }
    intake, metrics = intake_for(source)
    payload = (SAMPLES / "16-owntracks-location.json").read_bytes()
    assert b'"lat":59.4313733' in payload  # the sample, verbatim
    flush = feed(intake, "owntracks/urban/nexus", payload)
    assert stored(flush) == [
        ("urban-nexus", "accuracy", 16.0),
        ("urban-nexus", "latitude", 59.43),
        ("urban-nexus", "longitude", 18.33),
    ]
    assert intake.stats.readings == 4 and intake.stats.filtered == {"privacy": 1}
    assert metrics.value("gateway_agent_readings_filtered_total", filter="privacy") == 1


def senml_pack(device: str, values: list[float], metric: str = "temperature") -> bytes:
    return orjson.dumps(
        [{"bn": f"{device}/", "bt": NOW // S, "bu": "Cel"}]
        + [{"n": metric, "v": v, "t": i, "seq": i + 1} for i, v in enumerate(values)]
    )


@pytest.mark.parametrize("columns", [True, False], ids=["columns", "rows"])
def test_devices_and_metrics_dropped_and_values_rounded_on_both_paths(columns: bool) -> None:
    rules = {
        "drop_devices": ["guest-*"],
        "drop_metrics": ["humidity"],
        "round": {"temp*": 0},
    }
    intake, metrics = intake_for({"format": "senml", "privacy": rules}, columns)
    flush = feed(
        intake,
        "sensors/s1/x",
        senml_pack("kitchen", [21.26, 21.74]),
        senml_pack("guest-3", [22.0, 22.5, 23.0]),
        senml_pack("kitchen", [40.0], "humidity"),
    )
    assert stored(flush) == [("kitchen", "temperature", 21.0), ("kitchen", "temperature", 22.0)]
    assert intake.stats.filtered == {"privacy": 4}
    assert metrics.value("gateway_agent_readings_filtered_total", filter="privacy") == 4
    assert intake.stats.readings == 6 and not flush.dead_letters


@pytest.mark.parametrize("columns", [True, False], ids=["columns", "rows"])
def test_a_dropped_device_is_gone_before_validation(columns: bool) -> None:
    """Its out-of-range value makes no dead letter: nothing of it is stored at all."""
    intake, _ = intake_for({"format": "senml", "privacy": {"drop_devices": ["guest-*"]}}, columns)
    flush = feed(intake, "sensors/s1/x", senml_pack("guest-1", [9999.0]))
    assert flush.batch is None and not flush.dead_letters
    assert intake.stats.filtered == {"privacy": 1}


def test_dead_letters_of_a_private_source_carry_no_payload() -> None:
    bad = b'{"device": "phone", "lat": 59.4313733, "oops'
    intake, _ = intake_for({"privacy": {"round": {"lat": 2}}})
    (letter,) = feed(intake, "owntracks/u/d", bad).dead_letters
    assert letter.payload == b"" and f"{len(bad)} bytes withheld" in letter.detail
    intake, _ = intake_for({"privacy": {"round": {"lat": 2}, "dead_letter_payload": "keep"}})
    (letter,) = feed(intake, "owntracks/u/d", bad).dead_letters
    assert letter.payload == bad


def test_a_source_without_rules_is_untouched() -> None:
    intake, _ = intake_for({"format": "senml"})
    flush = feed(intake, "sensors/s1/x", senml_pack("guest-1", [21.26]))
    assert stored(flush) == [("guest-1", "temperature", 21.26)]
    assert intake.stats.filtered == {}


def test_the_first_round_pattern_that_matches_wins() -> None:
    rules = PrivacySettings(round={"lat*": 1, "*": 3})
    p = Privacy(rules)
    r = Reading("s1", "d", "latitude", 59.4313733, "lat", NOW, 1)
    out = p.apply(r)
    assert out is not None and out.value == 59.4
    out = p.apply(dataclasses.replace(r, metric="speed", value=1.23456))
    assert out is not None and out.value == 1.235


def test_bad_rules_are_refused_at_load_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sources\.0\.privacy\.round\.lat: .*less than or equal"):
        intake_for({"privacy": {"round": {"lat": 40}}})
    with pytest.raises(ConfigError, match=r"sources\.0\.privacy\.drop_device: Extra inputs"):
        intake_for({"privacy": {"drop_device": ["x"]}})

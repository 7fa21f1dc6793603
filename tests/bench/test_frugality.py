"""A tiny run of bench/frugality.py, so the benchmark keeps working (figures are not judged)."""

from __future__ import annotations

import orjson
import pytest

from bench import frugality
from tests.conftest import mosquitto_binary


def test_frugality_benchmark_runs_small(capsys: pytest.CaptureFixture[str]) -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    args = ["--duration", "2", "--warmup", "1", "--rounds", "1", "--scenarios", "json-1k"]
    assert frugality.main([*args, "--durability", "normal", "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    m = doc["medians"]["json-1k/normal"]
    assert m["agent_cpu_us_per_msg"] > 0 and m["bare_cpu_us_per_msg"] > 0
    assert m["cpu_ratio"] > 0 and m["encoded_bytes_per_reading"] > 0
    assert m["agent_peak_rss_mib"] >= m["agent_rss_mib"] > 0
    run = doc["runs"][0]
    assert run["agent_messages"] > 0 and run["bare_messages"] > 0

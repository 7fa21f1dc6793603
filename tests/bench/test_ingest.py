"""A tiny run of the ingest benchmark, so that it keeps working (not a measurement)."""

from __future__ import annotations

import orjson
import pytest

from bench import ingest
from tests.conftest import mosquitto_binary


def test_ingest_benchmark_runs_small(capsys: pytest.CaptureFixture[str]) -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    args = ["--messages", "300", "--packs", "20", "--pack-size", "10", "--rounds", "1", "--json"]
    assert ingest.main(args) == 0
    summary = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    assert set(summary["readings_per_s"]) == {"bare", "naive", "agent", "senml", "mapped"}
    assert summary["agent_vs_bare"] > 0 and summary["senml_readings_per_s"] > 0
    assert summary["mapped_vs_agent"] > 0

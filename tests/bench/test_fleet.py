"""A tiny run of the fleet benchmark, so the script keeps working."""

from __future__ import annotations

import orjson
import pytest

from bench import fleet


def test_fleet_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--devices", "200", "--rate", "2", "--duration", "2", "--warmup", "0.5"]
    assert fleet.main([*args, "--cpu", "-1", "--json"]) == 0
    result = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["target_msgs_per_s"] == 400
    assert result["achieved_msgs_per_s"] > 0 and result["queue_dropped"] == 0

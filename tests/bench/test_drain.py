"""A tiny run of bench/drain.py, so the benchmark keeps working (figures are not judged)."""

from __future__ import annotations

from bench import drain


def test_drain_bench_runs_with_small_sizes() -> None:
    result = drain.main(["--readings", "20000", "--batch", "500", "--rounds", "1", "--json"])
    assert result["readings"] == 20000
    assert result["ours_readings_per_s"] > 0 and result["bare_nats_py_readings_per_s"] > 0
    assert 0 < result["disk_vs_encoded"] < 10


def test_drain_bench_runs_encrypted_beside_plain() -> None:
    args = ["--readings", "20000", "--batch", "500", "--rounds", "1", "--encrypt", "--json"]
    result = drain.main(args)
    assert result["encrypted_readings_per_s"] > 0 and result["encrypted_vs_plain_drain"] > 0

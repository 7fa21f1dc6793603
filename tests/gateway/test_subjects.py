from __future__ import annotations

import pytest

from gateway import subjects
from gateway.errors import InvalidTokenError


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "*", ">", "dev>", "x" * 65, "ü"])
def test_hostile_tokens_are_refused(bad: str) -> None:
    with pytest.raises(InvalidTokenError) as info:
        subjects.agg("10s", "site", bad, "temp")
    assert info.value.kind == "device"


def test_subjects_follow_the_contract() -> None:
    assert subjects.telemetry("s1", "a-1") == "telemetry.s1.a-1"
    assert subjects.dlq("s1", "a1") == "dlq.s1.a1"
    assert subjects.status("s1", "a1") == "status.s1.a1"
    assert subjects.agg("10s", "s1", "d_1", "temp") == "agg.10s.s1.d_1.temp"


def test_kv_keys_and_filters_follow_the_contract() -> None:
    assert subjects.latest_key("10s", "s1", "d_1", "temp") == "10s.s1.d_1.temp"
    assert subjects.latest_filter() == "*.*.*.*"
    assert subjects.latest_filter(device="d1", window="1m") == "1m.*.d1.*"
    assert subjects.agg_filter(subjects.latest_filter(site="s1")) == "agg.*.s1.*.*"
    with pytest.raises(InvalidTokenError):
        subjects.latest_filter(metric="a.b")


def test_kv_subjects() -> None:
    key = subjects.latest_key("10s", "s1", "d1", "temp")
    assert subjects.kv_subject(subjects.LATEST_BUCKET, key) == "$KV.AGG_LATEST.10s.s1.d1.temp"
    for bad in ("", ".a", "a.", "a b", "a.*", ">"):
        with pytest.raises(InvalidTokenError):
            subjects.kv_subject(subjects.LATEST_BUCKET, bad)
    with pytest.raises(InvalidTokenError):
        subjects.kv_subject("A.B", "k")

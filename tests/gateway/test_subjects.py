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

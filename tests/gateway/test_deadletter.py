"""Dead-letter headers against their documentation (docs/wire-format.md, docs/api.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway import deadletter
from gateway.deadletter import DeadLetterHeaders

DOCS = Path(__file__).parents[2] / "docs"


INDEX_HEADERS = {"Gateway-Watermark", "Gateway-Window-Floor"}  # on AGG records, not dead letters


def documented_names() -> set[str]:
    text = (DOCS / "wire-format.md").read_text() + (DOCS / "api.md").read_text()
    return set(re.findall(r"`(Gateway-[A-Za-z0-9-]+)", text)) - INDEX_HEADERS


EDGE = DeadLetterHeaders("invalid_json", source="mqtt1", detail="line 1: expected value")
CLOUD = DeadLetterHeaders("late_10s", "telemetry.s1.a1", "2 readings", source_seq=42)


def test_the_headers_are_the_documented_ones() -> None:
    # the edge adds the last two to a dead letter it had to cut (edge/uplink.py)
    cut = {deadletter.ORIGINAL_SIZE, deadletter.ORIGINAL_DIGEST}
    assert set(CLOUD.to_headers()) | cut == documented_names()
    assert EDGE.to_headers() == {
        "Gateway-Dead-Letter-Reason": "invalid_json",
        "Gateway-Dead-Letter-Source": "mqtt1",
        "Gateway-Dead-Letter-Detail": "line 1: expected value",
    }
    assert CLOUD.to_headers()[deadletter.SOURCE_SEQ] == "42"


@pytest.mark.parametrize("letter", [EDGE, CLOUD])
def test_headers_round_trip_among_the_envelope_ones(letter: DeadLetterHeaders) -> None:
    headers = {"ce-id": "a1:x:dl:1:2", "Nats-Msg-Id": "a1:x:dl:1:2"} | letter.to_headers()
    assert DeadLetterHeaders.from_headers(headers) == letter


@pytest.mark.parametrize("headers", [None, {}, {"Gateway-Source-Seq": "x"}])
def test_missing_headers_read_leniently(headers: dict[str, str] | None) -> None:
    assert DeadLetterHeaders.from_headers(headers) == DeadLetterHeaders("unknown")

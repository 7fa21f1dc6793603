"""The contract every registered decoder keeps, run against each one (a new decoder joins
by being registered in `edge.decoders.DECODERS`): on any bytes at all it returns readings
whose names are valid subject tokens, or raises `DecodeError` with a reason; nothing else
escapes, and a column decoder agrees with its per-reading twin."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.decoders import COLUMN_DECODERS, DECODERS, Context
from edge.errors import DecodeError
from gateway.reading import Reading
from gateway.subjects import check_token

CTX = Context("site-1", 1_750_000_000_000_000_000, "sensors/site-1/dev-1", "dev-1")

# Random bytes rarely look like a payload, so also mutate near-valid ones.
NEAR_VALID = [
    b'{"site":"s","device":"d","metric":"temp","value":1.5,"unit":"Cel","seq":1,'
    b'"time":1750000000000000000}',
    b'[{"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1}]',
    b"weather,host=h temp=1.5 1750000000000000000",
    b"$GWR,dev-1,1,1750000000000,temp,1.5,Cel*00\r\n",
]
payloads = st.one_of(
    st.binary(max_size=512),
    st.sampled_from(NEAR_VALID).flatmap(
        lambda p: st.lists(
            st.tuples(st.integers(0, len(p) - 1), st.integers(0, 255)), max_size=4
        ).map(lambda edits: _mutate(p, edits))
    ),
)


def _mutate(payload: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(payload)
    for at, value in edits:
        b[at] = value
    return bytes(b)


def _decode_or_reason(name: str, payload: bytes) -> list[Reading] | str:
    try:
        return DECODERS[name](payload, CTX)
    except DecodeError as exc:
        assert exc.reason and " " not in exc.reason
        return exc.reason


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=300, deadline=None)
@given(payload=payloads)
def test_a_decoder_returns_readings_or_a_reason(name: str, payload: bytes) -> None:
    out = _decode_or_reason(name, payload)
    if isinstance(out, str):
        return
    for r in out:
        assert isinstance(r, Reading)
        for kind, token in (("site", r.site), ("device", r.device), ("metric", r.metric)):
            check_token(kind, token)
        assert isinstance(r.value, float) and isinstance(r.time_ns, int)


@pytest.mark.parametrize("name", sorted(COLUMN_DECODERS))
@settings(max_examples=300, deadline=None)
@given(payload=payloads)
def test_a_column_decoder_agrees_with_its_reading_decoder(name: str, payload: bytes) -> None:
    expected = _decode_or_reason(name, payload)
    try:
        columns = COLUMN_DECODERS[name](payload, CTX)
    except DecodeError as exc:
        assert isinstance(expected, str), f"columns refused ({exc.reason}) what readings took"
        return
    if columns is None:  # not a shape the column path takes: the reading path decides
        return
    assert not isinstance(expected, str)
    got = [c.reading(i) for c in columns for i in range(len(c))]
    assert sorted(got, key=repr) == sorted(expected, key=repr)


def test_the_contract_can_fail() -> None:
    """A valid payload is readings and garbage is a reason, so the checks above bite."""
    assert isinstance(_decode_or_reason("json", NEAR_VALID[0]), list)
    assert isinstance(_decode_or_reason("json", b"\xff\xfe"), str)

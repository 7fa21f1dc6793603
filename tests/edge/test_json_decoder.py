from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.decoders import decode_json
from edge.errors import DecodeError

GOOD = (
    b'{"site":"s","device":"d1","metric":"temp","value":21.5,"unit":"Cel",'
    b'"time":1700000000000000000,"seq":4}'
)


def test_one_reading_and_an_array() -> None:
    [r] = decode_json(GOOD)
    assert (r.device, r.value, r.seq) == ("d1", 21.5, 4)
    assert len(decode_json(b"[" + GOOD + b"," + GOOD + b"]")) == 2


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"42", "not_an_object"),
        (GOOD.replace(b'"seq":4', b'"seq":"4"'), "wrong_type"),
        (GOOD.replace(b',"unit":"Cel"', b""), "missing_field"),
        (GOOD.replace(b'"d1"', b'"d1.>"'), "invalid_device"),
        (GOOD.replace(b"21.5", b"1e999"), "invalid_json"),  # orjson refuses infinities
        (GOOD.replace(b'"seq":4', b'"seq":-1'), "invalid_seq"),
    ],
)
def test_bad_payloads_get_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_json(payload)
    assert info.value.reason == reason


@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    try:
        decode_json(data)
    except DecodeError:
        pass

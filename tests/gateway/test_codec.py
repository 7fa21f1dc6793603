from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import codec
from gateway.errors import CodecError


def _batch(n: int = 5) -> codec.Batch:
    b = codec.ColumnBuilder("site1", "agent1", "agent1:x:1", capacity=2)
    for i in range(n):
        b.add(
            f"dev{i % 2}",
            "temp" if i % 3 else "hum",
            "Cel",
            i * 1.5,
            1_700_000_000 * 10**9 + i,
            i,
            i % 4,
        )
    return b.build()


def test_round_trip_keeps_every_column() -> None:
    batch = _batch(7)
    out = codec.decode(codec.encode(batch))
    assert (out.site, out.agent, out.batch_id) == ("site1", "agent1", "agent1:x:1")
    assert out.series == batch.series
    for name in ("time_ns", "value", "seq", "series_index", "flags"):
        np.testing.assert_array_equal(getattr(out, name), getattr(batch, name))
    assert [r.seq for r in out.readings()] == list(range(7))


def test_empty_batch_round_trips() -> None:
    out = codec.decode(codec.encode(codec.ColumnBuilder("s", "a", "id").build()))
    assert len(out) == 0 and out.series == ()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p[:5], "too short"),
        (lambda p: b"XYZ" + p[3:], "bad magic"),
        (lambda p: p[:3] + b"\x09" + p[4:], "version 9"),
        (lambda p: p[:-1], "does not match"),
        (lambda p: p + b"\0" * 30, "does not match"),
    ],
)
def test_malformed_batches_say_what_is_wrong(mutate, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CodecError, match=message):
        codec.decode(mutate(codec.encode(_batch())))


def test_series_index_out_of_range_is_rejected() -> None:
    batch = _batch(3)
    bad = codec.Batch(
        batch.site,
        batch.agent,
        batch.batch_id,
        batch.series[:1],
        batch.time_ns,
        batch.value,
        batch.seq,
        batch.series_index + 5,
        batch.flags,
    )
    with pytest.raises(CodecError, match="series index"):
        codec.decode(codec.encode(bad))


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_codec_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except CodecError:
        pass

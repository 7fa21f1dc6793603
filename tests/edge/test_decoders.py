"""Every decoder on its own specification's examples, and on random bytes (hypothesis):
random input may only ever produce a `DecodeError` (a dead letter), never another error."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.decoders import (
    COLUMN_DECODERS,
    DECODERS,
    Context,
    decode_frame,
    decode_line,
    decode_senml,
)
from edge.decoders.frame import checksum, encode_frame, split_frame
from edge.decoders.line_protocol import Point, parse_line
from edge.decoders.senml import resolve
from edge.errors import DecodeError

NOW = 1_700_000_000_000_000_000
CTX = Context("site1", NOW, "sensors/site1/dev-7", "dev-7")


# -- SenML, RFC 8428 section 5 -------------------------------------------------------------
def test_rfc8428_single_datapoint() -> None:
    [rec] = resolve(b'[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]', NOW)
    assert (rec.name, rec.unit, rec.value, rec.time_ns) == (
        "urn:dev:ow:10e2073a01080063",
        "Cel",
        23.1,
        NOW,  # no time: "now"
    )


def test_rfc8428_multiple_datapoints_resolve_base_name() -> None:
    pack = (
        b'[{"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},'
        b'{"n":"current","u":"A","v":1.2}]'
    )
    readings = decode_senml(pack, CTX)
    assert [(r.device, r.metric, r.unit, r.value) for r in readings] == [
        ("10e2073a01080063", "voltage", "V", 120.1),
        ("10e2073a01080063", "current", "A", 1.2),
    ]


def test_rfc8428_base_time_base_unit_and_relative_times() -> None:
    pack = b"""[
     {"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,
      "bu":"A","bver":5,
      "n":"voltage","u":"V","v":120.1},
     {"n":"current","t":-5,"v":1.2},
     {"n":"current","t":-4,"v":1.3},
     {"n":"current","t":-3,"v":1.4},
     {"n":"current","t":-2,"v":1.5},
     {"n":"current","t":-1,"v":1.6},
     {"n":"current","v":1.7}
    ]"""
    recs = resolve(pack, NOW)
    # The RFC's resolved form: bt + t, bu where no u, bn + n.
    assert recs[0].name == "urn:dev:ow:10e2073a0108006:voltage"
    assert recs[0].unit == "V"
    assert recs[1].unit == "A"
    assert [round(r.time_ns / 1e6) for r in recs] == [
        1_276_020_076_001,
        1_276_020_071_001,
        1_276_020_072_001,
        1_276_020_073_001,
        1_276_020_074_001,
        1_276_020_075_001,
        1_276_020_076_001,
    ]
    assert [r.value for r in recs[1:]] == [1.2, 1.3, 1.4, 1.5, 1.6, 1.7]


def test_rfc8428_multiple_measurements_keep_units() -> None:
    pack = b"""[{"bn":"urn:dev:ow:10e2073a01080063","bt":1.320067464e+09,"bu":"%RH","v":20},
     {"u":"lon","v":24.30621},{"u":"lat","v":60.07965},{"t":60,"v":20.3}]"""
    recs = resolve(pack, NOW)
    assert [r.unit for r in recs] == ["%RH", "lon", "lat", "%RH"]
    assert recs[3].time_ns == 1_320_067_524 * 1_000_000_000


def test_senml_times_below_2_28_are_relative_to_now() -> None:
    [rec] = resolve(b'[{"n":"x","v":1,"t":-2.5}]', NOW)
    assert rec.time_ns == NOW - 2_500_000_000


def test_senml_name_without_separator_uses_topic_device_and_seq_extension() -> None:
    [r] = decode_senml(b'[{"n":"temperature","u":"Cel","v":21.5,"seq":9}]', CTX)
    assert (r.site, r.device, r.metric, r.seq) == ("site1", "dev-7", "temperature", 9)


@pytest.mark.parametrize(
    ("pack", "reason"),
    [
        (b"{}", "not_a_pack"),
        (b"[]", "empty_pack"),
        (b'[{"n":"a","v":1,"vs":"x"}]', "ambiguous_value"),
        (b'[{"n":"a"}]', "missing_value"),
        (b'[{"n":"a","v":1,"bver":11}]', "unsupported_version"),
        (b'[{"n":"a","v":1,"foo_":1}]', "unsupported_field"),
        (b'[{"n":"a b","v":1}]', "invalid_name"),
        (b'[{"n":"a","vs":"on"}]', "non_numeric_value"),
        (b'[{"n":"d.x/a","v":1}]', "invalid_device"),
        (b'[{"n":"a","v":"1"}]', "wrong_type"),
    ],
)
def test_senml_refusals_have_reasons(pack: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_senml(pack, CTX)
    assert info.value.reason == reason


# -- InfluxDB line protocol, its documentation's examples ----------------------------------
@pytest.mark.parametrize(
    ("line", "point"),
    [
        (
            'myMeasurement,tag1=value1,tag2=value2 fieldKey="fieldValue" 1556813561098000000',
            Point(
                "myMeasurement",
                {"tag1": "value1", "tag2": "value2"},
                {"fieldKey": "fieldValue"},
                1556813561098000000,
            ),
        ),
        (
            'my\\ Measurement fieldKey="string value"',
            Point("my Measurement", {}, {"fieldKey": "string value"}),
        ),
        (
            'myMeasurement fieldKey="\\"string\\" within a string"',
            Point("myMeasurement", {}, {"fieldKey": '"string" within a string'}),
        ),
        (
            "myMeasurement,tag\\ Key1=tag\\ Value1,tag\\ Key2=tag\\ Value2 fieldKey=100",
            Point(
                "myMeasurement",
                {"tag Key1": "tag Value1", "tag Key2": "tag Value2"},
                {"fieldKey": 100.0},
            ),
        ),
        (
            'myMeasurement,tagKey=🍭 fieldKey="Launch 🚀" 1556813561098000000',
            Point(
                "myMeasurement", {"tagKey": "🍭"}, {"fieldKey": "Launch 🚀"}, 1556813561098000000
            ),
        ),
        (
            "myMeasurement fieldKey=-1.234456e+78",
            Point("myMeasurement", {}, {"fieldKey": -1.234456e78}),
        ),
        ("myMeasurement fieldKey=-12485903i", Point("myMeasurement", {}, {"fieldKey": -12485903})),
        ("myMeasurement fieldKey=12485903u", Point("myMeasurement", {}, {"fieldKey": 12485903})),
        ("myMeasurement fieldKey=true", Point("myMeasurement", {}, {"fieldKey": True})),
        ("myMeasurement fieldKey=F", Point("myMeasurement", {}, {"fieldKey": False})),
        (
            "home,room=Living\\ Room temp=21.1,hum=35.9,co=0i 1641024000",
            Point(
                "home", {"room": "Living Room"}, {"temp": 21.1, "hum": 35.9, "co": 0}, 1641024000
            ),
        ),
        ("# a comment", None),
        ("", None),
    ],
)
def test_line_protocol_documentation_examples(line: str, point: Point | None) -> None:
    assert parse_line(line) == point


def test_line_protocol_to_readings() -> None:
    payload = (
        b'weather,device=st-1,unit=Cel temperature=21.5,seq=42i,status="ok" 1700000000000000001\n'
        b"power,device=st-1 value=3.5,seq=43i\n"
    )
    readings = decode_line(payload, CTX)
    assert [(r.device, r.metric, r.unit, r.value, r.seq, r.time_ns) for r in readings] == [
        ("st-1", "temperature", "Cel", 21.5, 42, 1700000000000000001),
        ("st-1", "power", "", 3.5, 43, NOW),
    ]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"m", "invalid_line"),
        (b"m f=", "invalid_line"),
        (b'm f="open', "invalid_line"),
        (b"m f=1 12x", "invalid_line"),
        (b"m,device=a.b f=1", "invalid_device"),
        (b'm s="only a string"', "no_readings"),
        (b"\xff", "invalid_utf8"),
    ],
)
def test_line_protocol_refusals_have_reasons(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_line(payload, CTX)
    assert info.value.reason == reason


# -- serial frames: NMEA 0183 checksums -----------------------------------------------------
@pytest.mark.parametrize(
    "sentence",
    [
        b"$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76",
        b"$GPRMC,092750.000,A,5321.6802,N,00630.3372,W,0.02,31.66,280511,,,A*43",
        b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",
    ],
)
def test_nmea_sentences_pass_the_checksum(sentence: bytes) -> None:
    assert split_frame(sentence + b"\r\n") == sentence[1:-3]
    with pytest.raises(DecodeError, match="bad_checksum"):
        split_frame(sentence[:-2] + b"00")
    with pytest.raises(DecodeError) as info:  # an NMEA sentence is not one of our frames
        decode_frame(sentence, CTX)
    assert info.value.reason == "unknown_sentence"


def test_frame_round_trip() -> None:
    frame = encode_frame("dev-3", 17, 1_700_000_000_123, "temperature", 21.5, "Cel")
    assert frame.endswith(b"\r\n")
    [r] = decode_frame(frame, CTX)
    assert (r.device, r.seq, r.time_ns, r.metric, r.value, r.unit) == (
        "dev-3",
        17,
        1_700_000_000_123_000_000,
        "temperature",
        21.5,
        "Cel",
    )
    [r] = decode_frame(encode_frame("dev-3", 18, None, "humidity", 40), CTX)
    assert (r.time_ns, r.unit) == (NOW, "")
    assert checksum(b"") == 0


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"GWR,d,1,,m,1*00", "invalid_frame"),
        (b"$GWR,d,1,,m,1", "missing_checksum"),
        (b"$GWR,d,1,,m,1*zz", "missing_checksum"),
        (b"$GWR,d,x,,m,1", "missing_checksum"),
        (b"$" + b"A" * 300 + b"*00", "frame_too_long"),
    ],
)
def test_frame_refusals_have_reasons(frame: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_frame(frame, CTX)
    assert info.value.reason == reason


def test_frame_field_errors_have_reasons() -> None:
    def framed(body: bytes) -> bytes:
        return b"$%s*%02X" % (body, checksum(body))

    for body, reason in [
        (b"GWR,d,x,,m,1", "invalid_seq"),
        (b"GWR,d,1,t,m,1", "invalid_time"),
        (b"GWR,d,1,,m,abc", "wrong_type"),
        (b"GWR,d,1,,m,nan", "non_finite_value"),
        (b"GWR,d>,1,,m,1", "invalid_device"),
        (b"GWR,d,1,,m", "invalid_frame"),
    ]:
        with pytest.raises(DecodeError) as info:
            decode_frame(framed(body), CTX)
        assert info.value.reason == reason, body


# -- every decoder: random bytes never raise anything but DecodeError ----------------------
@pytest.mark.parametrize("decoder", [*DECODERS.values(), *COLUMN_DECODERS.values()])
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_only_become_dead_letters(decoder: Callable[..., object], data: bytes) -> None:
    try:
        decoder(data, CTX)
    except DecodeError:
        pass


_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["n", "bn", "v", "vs", "vb", "bt", "t", "u", "bu", "bv", "seq", "bver", "s"]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(doc=_json)
def test_random_senml_shaped_json_only_becomes_dead_letters(doc: object) -> None:
    import orjson

    try:
        payload = orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):
        return
    for decode in (decode_senml, COLUMN_DECODERS["senml"]):
        try:
            decode(payload, CTX)
        except DecodeError:
            pass


@settings(max_examples=300, deadline=None)
@given(line=st.text(alphabet='ab=, "\\\\0123456789.eiutTf-#\n', max_size=60))
def test_random_line_protocol_text_only_becomes_dead_letters(line: str) -> None:
    try:
        decode_line(line.encode(), CTX)
    except DecodeError:
        pass

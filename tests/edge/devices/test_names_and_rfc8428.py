"""The name rule (reversible, collision-free), topic patterns, mapping errors, and the
RFC 8428 examples 5.1.1 to 5.1.3 (payloads verbatim from the RFC) record by record."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.catalog import load_catalog
from edge.decoders import Context, build_decoder, decode_senml
from edge.decoders.topics import PatternError, compile_pattern, compile_template
from edge.errors import DecodeError
from edge.validation import Validator
from gateway import config
from gateway.config import MappingSettings, ValidationSettings
from gateway.errors import ConfigError, InvalidTokenError
from gateway.subjects import check_token, decode_token, encode_token
from tests.edge.devices.samples import SAMPLES

NOW = 1_800_000_000_000_000_000


@given(st.text(min_size=1, max_size=20))
def test_name_rule_round_trips_any_name(name: str) -> None:
    try:
        token = encode_token("device", name)
    except InvalidTokenError:
        return  # over 64 characters once escaped: refused, never cut short
    assert check_token("device", token) == token
    assert decode_token(token) == name


def test_name_rule_is_collision_free_over_every_short_name_of_its_tricky_alphabet() -> None:
    seen: dict[str, str] = {}
    for k in range(1, 7):
        for chars in itertools.product("_A/2F", repeat=k):
            name = "".join(chars)
            token = encode_token("device", name)
            assert seen.setdefault(token, name) == name


def test_name_rule_keeps_valid_tokens_and_escapes_the_rest() -> None:
    for name in ["tasmota_C26D46", "dev-7", "temp_c", "0x00158d0002c4e8a1"]:
        assert encode_token("device", name) == name
    assert encode_token("device", "kitchen/weather") == "kitchen__2Fweather"
    assert encode_token("device", "Python Edge Node 1") == "Python__20Edge__20Node__201"
    assert encode_token("device", "a__2F") == "a__5F_2F"  # looks escaped: escaped itself
    with pytest.raises(InvalidTokenError):
        encode_token("device", "")
    with pytest.raises(InvalidTokenError):
        encode_token("device", "/" * 30)


def test_topic_patterns_name_segments() -> None:
    p = compile_pattern("shellies/{device}/relay/{channel}/{metric}")
    assert p.match("shellies/s1/relay/0/power") == {
        "device": "s1",
        "channel": "0",
        "metric": "power",
    }
    assert p.match("shellies/s1/relay/0") is None
    z = compile_pattern("zigbee2mqtt/{device...}")
    assert z.match("zigbee2mqtt/kitchen/weather") == {"device": "kitchen/weather"}
    t = compile_pattern("v3/{app}@{tenant}/devices/{device}/up")
    assert t.match("v3/app1@ttn/devices/dev1/up") == {
        "app": "app1",
        "tenant": "ttn",
        "device": "dev1",
    }
    for bad in ["a/#/b", "a/{x}/{x}", "a/{x?}"]:
        with pytest.raises(PatternError):
            compile_pattern(bad)
    tpl = compile_template("{host}-{sensor?}")
    assert tpl.render("device", {"host": "h"}) == "h"
    assert tpl.render("device", {"host": "h", "sensor": "s"}) == "h-s"
    with pytest.raises(DecodeError) as info:
        tpl.render("device", {})
    assert info.value.reason == "missing_device"


def _mapped(**kw: object) -> object:
    return build_decoder("sources.0.mapping", "mapped", MappingSettings.model_validate(kw))


def test_bad_mappings_are_config_errors_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sources\.0\.mapping\.readings"):
        _mapped(readings="a[")
    with pytest.raises(ConfigError, match=r"sources\.0\.mapping"):
        _mapped(topic_patterns=["a/#/b"])
    with pytest.raises(ConfigError, match="time_zone"):
        _mapped(time_zone="Mars/Olympus")
    with pytest.raises(ConfigError, match="needs a \\[mapping\\]"):
        config.parse(
            config.AgentConfig, {"site": "s", "agent": "a", "sources": [{"format": "value"}]}
        )


@pytest.mark.parametrize(
    ("kw", "topic", "payload", "reason"),
    [
        ({}, "t/d", b"{not json", "invalid_json"),
        ({"topic_patterns": ["tele/{device}/SENSOR"]}, "x/d", b"{}", "topic_mismatch"),
        ({}, "t/d", b'{"a": "text only"}', "no_readings"),
        ({"readings": "x"}, "t/d", b'{"x": [1]}', "no_readings"),
        (
            {"time_path": "T", "time_format": "iso8601"},
            "t/d",
            b'{"T": "yesterday", "v": 1}',
            "invalid_time",
        ),
        ({"seq_path": "s"}, "t/d", b'{"s": "one", "v": 1}', "invalid_seq"),
        ({}, "t/" + "é" * 40, b'{"v": 1}', "invalid_device"),
    ],
)
def test_bad_payloads_are_dead_letters_with_a_reason(
    kw: dict[str, object], topic: str, payload: bytes, reason: str
) -> None:
    decode = _mapped(**kw)
    with pytest.raises(DecodeError) as info:
        decode(payload, Context.for_topic("s1", topic, NOW))  # type: ignore[operator]
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("ts", "want_ns"),
    [
        (b"1734476334.51", 1734476334_510000000),  # Shelly Gen3 NotifyStatus (sample 39)
        (b"1745708765.60", 1745708765_600000000),
        (b"1631186545.04", 1631186545_040000000),
        (b"1700000000.123456", 1700000000_123456000),  # µs: what a float64 holds
        (b"1700000000", 1700000000_000000000),
    ],
)
def test_fractional_epoch_seconds_keep_the_digits_as_written(ts: bytes, want_ns: int) -> None:
    decode = _mapped(time_path="ts", time_format="s", skip=["ts"])
    (r,) = decode(b'{"ts": ' + ts + b', "v": 1}', Context.for_topic("s1", "t/d", NOW))  # type: ignore[operator]
    assert r.time_ns == want_ns


def test_plain_values_refuse_what_is_not_a_value() -> None:
    decode = build_decoder(
        "sources.0.mapping",
        "value",
        MappingSettings(topic_patterns=["{device}/sensor/{metric}/state"], metric="{metric}"),
    )
    ctx = Context.for_topic("s1", "n/sensor/t/state", NOW)
    assert [r.value for r in decode(b"ON", ctx)] == [1.0]
    for bad in [b"warm", b"nan", b"1" * 100]:
        with pytest.raises(DecodeError) as info:
            decode(bad, ctx)
        assert info.value.reason in ("not_a_value", "non_finite_value")


# RFC 8428, payloads verbatim (tests/edge/devices/samples/13-15-senml-rfc8428-5.1.x.json).
BT = 1_276_020_076_001_000_000  # 5.1.3's bt, 1.276020076001e+09 s


def _rfc(file: str) -> list[tuple[str, str, float, str, int]]:
    now = time.time_ns()
    settings = ValidationSettings.model_validate(
        {"types": [{"devices": ["10e2073a*"], "type": "smart_plug"}]}  # 120 V mains
    )
    v = Validator(load_catalog(), settings)
    rs = decode_senml((SAMPLES / file).read_bytes(), Context.for_topic("s1", "senml/x", now))
    out = []
    for r in rs:
        c = v.check(r, now).reading
        out.append(
            (
                c.device,
                c.metric,
                c.value,
                c.unit,
                c.time_ns - now if c.time_ns > BT + 10**10 else c.time_ns,
            )
        )
    return out


def test_rfc8428_5_1_1_single_datapoint() -> None:
    (rec,) = _rfc("13-senml-rfc8428-5.1.1.json")
    assert rec[:4] == ("10e2073a01080063", "temperature", 23.1, "Cel")
    assert -(10**9) < rec[4] <= 0  # no time: now


def test_rfc8428_5_1_2_multiple_datapoints() -> None:
    recs = _rfc("14-senml-rfc8428-5.1.2.json")
    assert [r[:4] for r in recs] == [
        ("10e2073a01080063", "voltage", 120.1, "V"),
        ("10e2073a01080063", "current", 1.2, "A"),
    ]
    assert all(-(10**9) < r[4] <= 0 for r in recs)


def test_rfc8428_5_1_3_multiple_measurements_each_with_its_time_and_unit() -> None:
    recs = _rfc("15-senml-rfc8428-5.1.3.json")
    dev = "10e2073a0108006"
    want = [(dev, "voltage", 120.1, "V", BT)]
    want += [(dev, "current", 1.2 + 0.1 * i, "A", BT + (i - 5) * 10**9) for i in range(6)]
    assert len(recs) == len(want)
    for got, exp in zip(recs, want, strict=True):
        assert got[:2] == exp[:2] and got[3] == exp[3]
        assert got[2] == pytest.approx(exp[2])
        assert abs(got[4] - exp[4]) < 1000  # bt is a float: microsecond rounding at most

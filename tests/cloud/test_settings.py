"""Cloud settings and command-line arguments: bad values are refused with the key named."""

from __future__ import annotations

import pytest

from cloud.cli import _partition
from cloud.views.query import Selector, parse_time
from cloud.windows import label_seconds, window_label
from gateway import config
from gateway.errors import ConfigError, InvalidTokenError


@pytest.mark.parametrize(
    ("windows", "why"),
    [([7], "divide 86400"), ([10, 10], "distinct"), ([], "at least 1")],
)
def test_bad_window_widths_name_the_key(windows: list[int], why: str) -> None:
    with pytest.raises(ConfigError, match=rf"aggregator\.windows_s.*{why}"):
        config.parse(config.CloudConfig, {"aggregator": {"windows_s": windows}})


@pytest.mark.parametrize("text", ["2", "1/1", "x/2", "-1/2"])
def test_bad_partition_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--partition"):
        _partition(text)


def test_partition_and_times_parse() -> None:
    assert _partition("1/3") == (1, 3)
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000 * 10**9
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000 * 10**9
    assert parse_time("1700000000000000000") == 1_700_000_000 * 10**9
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_time("yesterday")


def test_selector_subjects_and_tokens() -> None:
    assert Selector().subject() == "agg.*.*.*.*"
    assert Selector(device="d1", window="1m").kv_key() == "1m.*.d1.*"
    with pytest.raises(InvalidTokenError):
        Selector(site="a.b").subject()


@pytest.mark.parametrize(
    ("section", "value", "why"),
    [
        ("streams", {"agg_retention_s": {"1 h": 3600}}, r"streams\.agg_retention_s.*window label"),
        ("streams", {"agg_retention_s": {"1h": 0}}, r"streams\.agg_retention_s\.1h"),
        ("views", {"live_max_clients": 0}, r"views\.live_max_clients"),
    ],
)
def test_bad_retention_and_live_cap_name_the_key(
    section: str, value: dict[str, object], why: str
) -> None:
    with pytest.raises(ConfigError, match=why):
        config.parse(config.CloudConfig, {section: value})


def test_window_labels_round_trip() -> None:
    for width in (1, 10, 30, 60, 300, 3600, 7200, 86400):
        assert label_seconds(window_label(width)) == width
    assert [window_label(w) for w in (10, 60, 3600, 86400)] == ["10s", "1m", "1h", "1d"]
    for bad in ("", "h", "0s", "10x", "-1m"):
        with pytest.raises(ValueError, match="expected a width"):
            label_seconds(bad)

"""Control-plane records: the version order anti-rollback relies on, and `force`."""

from __future__ import annotations

from gateway.records import DesiredState, version_key


def test_versions_order_numerically_not_as_text() -> None:
    labels = ["1.9.0", "1.10.0", "1.2.0", "2.0.0-rc1", "2.0.0", "0.9"]
    assert sorted(labels, key=version_key) == [
        "0.9", "1.2.0", "1.9.0", "1.10.0", "2.0.0", "2.0.0-rc1",
    ]  # fmt: skip
    assert version_key("1.0.0") == version_key("1.0.0")
    assert version_key("1.3.0") > version_key("1.0.0")


def test_desired_state_force_round_trips_and_defaults_off() -> None:
    forced = DesiredState("1.0.0", "r1", "", 5, force=True)
    assert DesiredState.decode(forced.encode()).force is True
    assert DesiredState.decode(b'{"version": "1.0.0"}').force is False  # older writers

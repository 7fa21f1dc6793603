"""Command registration, rollout step plans and target patterns (no servers needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import build_parser, main
from deploy.errors import RolloutHalted, TargetError
from deploy.rollout import plan_steps
from deploy.targets import matching, parse_pattern
from edge.supervisor.render import dump_toml
from gateway import config
from gateway.config import AgentConfig


def test_deploy_fleet_and_supervise_commands_are_registered() -> None:
    parser = build_parser()
    for argv in (
        ["deploy", "keygen"],
        ["deploy", "init"],
        ["deploy", "bundle", "--version", "1.0", "--key", "k.pem"],
        ["deploy", "publish", "b.bundle", "--key", "k.pub"],
        [
            "deploy",
            "bootstrap",
            "--site",
            "s",
            "--agent",
            "a",
            "--nats-url",
            "nats://x:4222",
            "--key",
            "k.pub",
            "--bundle",
            "b.bundle",
        ],
        ["deploy", "rollout", "--bundle", "1.0", "--to", "s1/*", "--canary", "2", "--batch", "25"],
        ["deploy", "config", "--to", "*/*", "c.toml"],
        ["fleet", "status", "--json"],
        ["edge", "supervise", "--root", "/opt/iot-gateway"],
        ["edge", "run", "--config", "a.toml"],
    ):
        assert callable(parser.parse_args(argv).func), argv


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    priv, pub = tmp_path / "k", tmp_path / "k.pub"
    assert main(["deploy", "keygen", "--private", str(priv), "--public", str(pub)]) == 0
    assert priv.stat().st_mode & 0o777 == 0o600
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert main(["deploy", "keygen", "--private", str(priv), "--public", str(pub)]) == 2


@pytest.mark.parametrize(
    ("n", "canary", "pct", "expected"),
    [
        (3, 1, 100.0, [1, 2]),
        (3, 1, 50.0, [1, 2]),
        (10, 2, 20.0, [2, 2, 2, 2, 2]),
        (10, 0, 30.0, [3, 3, 3, 1]),
        (1, 3, 100.0, [1]),
    ],
)
def test_plan_steps(n: int, canary: int, pct: float, expected: list[int]) -> None:
    targets = [f"s.a{i}" for i in range(n)]
    steps = plan_steps(targets, canary, pct)
    assert [len(s) for s in steps] == expected
    assert [k for s in steps for k in s] == targets


def test_plan_rejects_bad_percent() -> None:
    with pytest.raises(ValueError, match="--batch"):
        plan_steps(["s.a"], 1, 0)


def test_target_patterns() -> None:
    keys = ["farm1.pi-1", "farm1.pi-2", "farm2.pi-1"]
    assert matching(keys, "farm1/*") == ["farm1.pi-1", "farm1.pi-2"]
    assert matching(keys, "*/pi-1") == ["farm1.pi-1", "farm2.pi-1"]
    for bad in ("farm1", "/x", "a/b/c", "a/"):
        with pytest.raises(TargetError):
            parse_pattern(bad)


def test_halted_message_names_each_device() -> None:
    err = RolloutHalted("3.0", {"s.a": "rolled_back: not healthy", "s.b": "refused: x"})
    assert "s.a: rolled_back" in str(err) and "s.b: refused" in str(err)


def test_rendered_agent_config_reads_back_equal() -> None:
    cfg = config.parse(
        AgentConfig,
        {
            "site": "s",
            "agent": "a",
            "sources": [{"url": "mqtt://h:1", "topics": ["a/#", 'q"']}],
            "batch": {"linger_ms": 5},
        },
    )
    import tomllib

    doc = tomllib.loads(dump_toml(cfg.model_dump(mode="json", exclude_none=True)))
    assert config.parse(AgentConfig, doc) == cfg


def test_records_round_trip_and_reject_garbage() -> None:
    from gateway.errors import GatewayError
    from gateway.records import DesiredState, DeviceStatus

    st = DeviceStatus("s", "a", "healthy", "2.0", failed={"3.0": "not healthy"})
    assert DeviceStatus.decode(st.encode()) == st
    assert DesiredState.decode(b'{"version": "1", "from_the_future": 1}').version == "1"
    for bad in (b"{", b"[]", b'{"rollout": "x"}'):
        with pytest.raises(GatewayError):
            DesiredState.decode(bad)

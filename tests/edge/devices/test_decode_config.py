"""`gateway decode --config FILE --topic TOPIC [PAYLOAD_FILE]`: one message, decoded as the
agent of that config would (its source for the topic, its mapping, its validation)."""

from __future__ import annotations

import subprocess
import sys

import orjson

from tests.edge.devices.profiles import PROFILE_DIR
from tests.edge.devices.samples import SAMPLES


def _decode(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "app", "decode", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=60)


def test_decode_a_sample_as_the_profile_agent_would() -> None:
    out = _decode(
        "--config",
        str(PROFILE_DIR / "tasmota.toml"),
        "--topic",
        "tele/power1/SENSOR",
        str(SAMPLES / "04-tasmota-energy-us-121v.json"),
    )
    assert out.returncode == 0, out.stderr
    rows = [orjson.loads(line) for line in out.stdout.splitlines()]
    volts = [r for r in rows if r["metric"] == "voltage"]
    assert volts == [
        {
            "site": "site1",
            "device": "power1-ENERGY",
            "metric": "voltage",
            "value": 121.0,  # US mains: in range for a smart_plug
            "unit": "V",
            "time": 1601784155 * 10**9,
            "seq": -1,
            "flags": 0,
        }
    ]
    assert len(rows) == 10


def test_decode_reports_dead_letters_and_unmatched_topics() -> None:
    cfg = str(PROFILE_DIR / "tasmota.toml")
    bad = _decode("--config", cfg, "--topic", "tele/x/SENSOR", stdin=b'{"Time": "nope"}')
    assert bad.returncode == 1
    (letter,) = [orjson.loads(line) for line in bad.stdout.splitlines()]
    assert letter["dead_letter"] and letter["reason"] == "invalid_time"
    none = _decode("--config", cfg, "--topic", "other/x", stdin=b"{}")
    assert none.returncode == 2 and b"no source" in none.stderr
    both = _decode("--config", cfg, "--format", "json", "--topic", "a", stdin=b"{}")
    assert both.returncode == 2

"""`gateway decode`, as an operator runs it on a file of captured payloads."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from app.cli import main
from edge.decoders.frame import encode_frame

NOW_MS = time.time_ns() // 1_000_000


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, object]]]:
    code = main(["decode", *args])
    lines = capsys.readouterr().out.splitlines()
    return code, [orjson.loads(line) for line in lines]


def test_frames_file_prints_readings_and_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "capture.txt"
    path.write_bytes(
        encode_frame("dev-1", 7, NOW_MS, "temperature", 21.5, "Cel")
        + b"$GWR,dev-1,8,,temperature,21.6*00\r\n"
    )
    code, out = run(capsys, "--format", "frame", "--site", "s9", str(path))
    assert code == 1
    assert out[0] == {
        "site": "s9",
        "device": "dev-1",
        "metric": "temperature",
        "value": 21.5,
        "unit": "Cel",
        "time": NOW_MS * 1_000_000,
        "seq": 7,
        "flags": 0,
    }
    assert out[1]["dead_letter"] is True and out[1]["reason"] == "bad_checksum"


def test_one_pretty_printed_senml_document_uses_the_topic_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pack.json"
    pretty = '[\n {"n": "humidity", "u": "%RH", "v": 40},\n {"n": "x y", "v": 1}\n]'
    path.write_text(pretty)
    code, out = run(capsys, "--format", "senml", "--topic", "sensors/s1/dev-9", str(path))
    assert code == 1
    assert out == [
        {
            "dead_letter": True,
            "reason": "invalid_name",
            "detail": "'x y'",
            "payload": path.read_text(),
        },
    ]
    path.write_text('[{"n": "humidity", "u": "%RH", "v": 40, "seq": 1}]')
    code, out = run(capsys, "--format", "senml", "--topic", "sensors/s1/dev-9", str(path))
    assert code == 0 and out[0]["device"] == "dev-9" and out[0]["seq"] == 1

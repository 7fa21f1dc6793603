from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import build_parser, main


def test_every_command_is_registered() -> None:
    parser = build_parser()
    for argv in (
        ["demo", "--devices", "3"],
        ["edge", "run", "--config", "x.toml"],
        ["cloud", "init"],
        ["cloud", "aggregate"],
        ["watch"],
    ):
        assert callable(parser.parse_args(argv).func)


def test_bad_config_is_a_clear_error_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text('site = "a b"\nagent = "x"\n')
    assert main(["edge", "run", "--config", str(bad)]) == 2
    assert "site" in capsys.readouterr().err

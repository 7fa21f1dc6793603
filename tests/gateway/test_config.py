from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("model", "name"),
    [(config.AgentConfig, "agent.example.toml"), (config.CloudConfig, "cloud.example.toml")],
)
def test_example_configs_load(model: type, name: str) -> None:
    config.load(model, ROOT / "config" / name)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('site = "s"\nagent = "a"\n[batch]\nlinger_ms = "soon"\n', "batch.linger_ms"),
        ('site = "s"\nagent = "a"\n[[sources]]\ntopcis = ["x"]\n', "sources.0.topcis"),
        (
            'site = "s"\nagent = "a"\n[[filters]]\ntype = "dedupe"\nwindw = 5\n',
            "filters.0.windw",
        ),
        ('site = "s.x"\nagent = "a"\n', "site"),
        ('site = "s"\n', "agent"),
        ("site = [", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        config.load(config.AgentConfig, path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(config.AgentConfig, tmp_path / "nope.toml")

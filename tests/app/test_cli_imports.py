"""`gateway edge run` loads the edge alone: what the agent's process imports is resident
memory on a Pi (issue 17, docs/benchmarks.md). Checked in a fresh interpreter each."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(m for m, v in sys.modules.items() if v))"
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return set(out.split())


def test_edge_run_parses_without_other_areas_or_nats() -> None:
    loaded = _modules_after(
        "import app.cli; app.cli.build_parser(['edge', 'run', '--config', 'x'])"
    )
    assert "edge.cli" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("cloud", "deploy", "firmware_sim", "nats")}


def test_the_agent_runs_without_aiohttp_cryptography_or_protobuf() -> None:
    loaded = _modules_after("import edge.cli; edge.cli._leave_out_aiohttp(); import edge.agent")
    assert "edge.agent" in loaded and "nats" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("aiohttp", "cryptography", "google")}


def test_every_area_is_registered_for_help() -> None:
    loaded = _modules_after("import app.cli; app.cli.build_parser()")
    assert {"cloud.cli", "deploy.cli", "firmware_sim.cli", "edge.supervisor.cli"} <= loaded

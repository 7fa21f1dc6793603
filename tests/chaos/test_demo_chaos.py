"""`gateway demo --chaos` as a user runs it: faults injected, nothing lost or doubled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_chaos_injects_faults_and_still_reports_exactly_once(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "demo",
            "--chaos",
            "--seed",
            "7",
            "--devices",
            "10",
            "--duration",
            "32",
            "--json",
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["missing"] == 0 and summary["duplicates"] == 0
    assert summary["faults"] >= 3 and summary["emitted"] > 0

"""`gateway demo --chaos` as a user runs it: faults injected, nothing lost or doubled.

Issue 12: the demo's fleet now has devices sending packs (JSON arrays and SenML of 100
readings) and devices rebooting with their seq restarting under a new boot, and the faults
include a SIGKILL during a backlog's drain, a full disk (the agent's data dir on a tmpfs,
as root) and oversized messages, which must come out as dead letters with a reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.chaos import FaultInjector


def _demo(tmp_path: Path, seconds: int, *extra: str) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable, "-m", "app", "demo", "--chaos", "--seed", "7", "--devices", "10",
            "--duration", str(seconds), "--json", "--data-dir", str(tmp_path / "demo"), *extra,
        ],
        capture_output=True,
        text=True,
        timeout=220,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return summary


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_chaos_injects_every_kind_of_fault_and_still_reports_exactly_once(
    tmp_path: Path,
) -> None:
    s = _demo(tmp_path, 55)
    assert s["missing"] == 0 and s["duplicates"] == 0, s
    assert s["emitted"] and s["pack_devices"] == 3 and s["reboots"], s
    kinds = set(FaultInjector.KINDS)
    if os.geteuid() != 0:
        assert "disk_full" in s["faults_skipped"], s
        kinds.discard("disk_full")
    assert set(s["faults_by_kind"]) == kinds, s
    # Every oversized message the broker took is a dead letter, with a reason.
    assert s["oversized_sent"] >= 1 and s["oversized_dead_letters"] == s["oversized_sent"], s
    assert s["oversized_reasons"] and "unknown" not in s["oversized_reasons"], s
    # Whatever is not stored, the agent reports as dropped.
    assert s["not_stored"] <= s["dropped"], s
    # The larger message (2 MiB) is refused by nats-server's MQTT listener itself.
    assert s["oversized_refused_by_broker"] >= 1, s

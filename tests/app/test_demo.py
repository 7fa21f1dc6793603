"""`gateway demo` end to end, as a user runs it: exit code, JSON summary, no leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def _demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app", "demo", "--data-dir", str(tmp_path / "demo"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_demo_delivers_everything_once_and_leaves_nothing_running(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--devices", "10", "--duration", "14", "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["missing"] == 0 and summary["duplicates"] == 0
    assert summary["emitted"] > 0 and summary["stored"] == summary["emitted"]
    assert summary["windows"] > 0
    assert _processes_mentioning(str(tmp_path)) == []


def test_demo_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--devices", "5", "--json")
    log = tmp_path / "demo" / "agent.log"
    deadline = time.monotonic() + 60
    while "ready" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, "demo never got ready"
        time.sleep(0.2)
    time.sleep(2)  # let some readings flow
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["missing"] == 0 and summary["duplicates"] == 0, err[-3000:]
    assert _processes_mentioning(str(tmp_path)) == []

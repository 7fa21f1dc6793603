"""The agent as the supervisor's child process, and the check that it became healthy.

Healthy means: a heartbeat on `status.<site>.<agent>` from this very process (its pid)
saying `ready` (sources subscribed, buffer open). The heartbeat goes through the cloud
NATS the supervisor itself uses, so a version that cannot reach the cloud is not healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient

from gateway import process, subjects
from gateway.records import BUNDLE_VERSION_ENV


class AgentProcess:
    """Start/stop the agent of one installed version; at most one runs at a time."""

    def __init__(self, log_path: Path, user: process.Account | None = None) -> None:
        self.log_path = log_path
        self.user = user  # None: the agent runs as we do
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, version_dir: Path, config: Path, version: str) -> int:
        assert not self.alive, "an agent is already running"
        # The version's own console script: every bundle has one, whichever module holds its
        # command line (`gateway.cli` in bundles built before the app/ shell, `app.cli`
        # since), so a rollback to an older version still starts. Its shebang is the
        # version's venv python; PYTHONPATH is dropped so nothing outside it leaks in.
        command = version_dir / "venv" / "bin" / "gateway"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env[BUNDLE_VERSION_ENV] = version
        args = [str(command), "edge", "run", "--config", str(config)]
        if self.user is not None:  # the agent reads its config, never writes it
            os.chown(config, 0, self.user.gid)
            config.chmod(0o640)
        self.proc = process.spawn(args, self.log_path, env=env, user=self.user)
        self.version = version
        return self.proc.pid

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: the agent makes what it holds durable, acks it, and exits."""
        proc, self.proc = self.proc, None
        if proc is not None:
            await asyncio.to_thread(process.stop, proc, timeout)


async def wait_healthy(
    nc: NatsClient, site: str, agent: str, child: AgentProcess, timeout: float
) -> str | None:
    """None once the child reports ready; otherwise why not (exited, or the deadline)."""
    assert child.proc is not None
    pid = child.proc.pid
    ready = asyncio.Event()

    async def on_status(msg: Any) -> None:
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            beat = orjson.loads(msg.data)
            if beat.get("pid") == pid and beat.get("ready"):
                ready.set()

    sub = await nc.subscribe(subjects.status(site, agent), cb=on_status)
    deadline = time.monotonic() + timeout
    try:
        while not ready.is_set():
            if not child.alive:
                code = child.proc.returncode if child.proc else None
                return f"agent {child.version} exited with {code} before it was healthy"
            if time.monotonic() > deadline:
                return f"agent {child.version} not healthy within {timeout:.0f}s"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), 0.5)
        return None
    finally:
        await sub.unsubscribe()

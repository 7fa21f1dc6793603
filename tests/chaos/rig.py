"""A whole data path for chaos tests: real servers, the agent as a child process (so that
SIGKILL is a real crash), an in-process fleet with ground truth, and the checks
(`app.verify.compare` on the TELEMETRY stream, the agent's own accounting)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.fleet import Fleet, FleetSettings
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext

from app.demo import Children
from app.verify import Report, StreamContents, compare, read_telemetry
from cloud.streams import ensure_streams
from devices.catalog import load_catalog
from edge import accounting
from edge.errors import BufferStoreError
from gateway.config import StreamSettings
from gateway.connect import connect
from gateway.servers import NatsServer
from tests.helpers import agent_nats, cloud_security

SITE = "chaos"
AGENT = "a1"


@dataclass(slots=True)
class AgentOptions:
    max_bytes: int = 64 << 20
    overflow: str = "drop_oldest"
    durability: str = "normal"
    max_readings: int = 200
    linger_ms: int = 100
    forget_series_after_s: float = 3600.0


@dataclass(slots=True)
class Rig:
    root: Path
    cloud: NatsServer
    edge: NatsServer
    children: Children
    nc: NatsClient
    js: JetStreamContext
    options: AgentOptions = field(default_factory=AgentOptions)
    fleet: Fleet | None = None
    _fleet_stop: asyncio.Event = field(default_factory=asyncio.Event)
    _fleet_task: asyncio.Task[None] | None = None
    agent_starts: int = 0

    @property
    def buffer_path(self) -> Path:
        return self.root / "agent" / "buffer.sqlite3"

    def write_config(self) -> Path:
        o = self.options
        path = self.root / "agent.toml"
        n = agent_nats(self.cloud, SITE, AGENT)
        path.write_text(
            f'site = "{SITE}"\nagent = "{AGENT}"\ndata_dir = "{self.root / "agent"}"\n'
            f'[nats]\nurl = "{n["url"]}"\nca_file = "{n["ca_file"]}"\n'
            f'creds_file = "{n["creds_file"]}"\n'
            f'[[sources]]\nurl = "{self.edge.mqtt_url}"\ntopics = ["sensors/#"]\n'
            f"[batch]\nmax_readings = {o.max_readings}\nlinger_ms = {o.linger_ms}\n"
            f"forget_series_after_s = {o.forget_series_after_s}\n"
            f'[buffer]\nmax_bytes = {o.max_bytes}\noverflow = "{o.overflow}"\n'
            f'durability = "{o.durability}"\n'
            "[uplink]\npublish_timeout_s = 2.0\nbackoff_max_s = 1.0\nheartbeat_s = 0.5\n"
        )
        return path

    def start_agent(self) -> None:
        self.children.start("agent", "edge", "run", "--config", str(self.write_config()))
        self.agent_starts += 1

    async def wait_ready(self, timeout: float = 60) -> None:
        """Until the agent started last logs that it is ready (subscribed to its broker)."""
        log = self.root / "agent.log"
        deadline = time.monotonic() + timeout
        while True:
            text = log.read_text(errors="replace") if log.exists() else ""
            if text.count(f"agent {SITE}/{AGENT} ready") >= self.agent_starts:
                return
            self.children.check_alive()
            assert time.monotonic() < deadline, "agent not ready:\n" + text[-3000:]
            await asyncio.sleep(0.1)

    async def kill_agent(self) -> None:
        """SIGKILL: no flush, no clean shutdown, as on a power cut."""
        proc = self.children.procs.pop("agent")
        await asyncio.to_thread(_sigkill, proc)

    async def stop_agent(self) -> None:
        await self.children.stop("agent")

    def start_fleet(self, devices: int, rate_hz: float) -> Fleet:
        settings = FleetSettings(
            host="127.0.0.1", port=self.edge.mqtt_port, devices=devices, site=SITE, rate_hz=rate_hz
        )
        self.fleet = Fleet(settings, load_catalog())
        self._fleet_stop = asyncio.Event()
        self._fleet_task = asyncio.create_task(self.fleet.run(self._fleet_stop), name="fleet")
        return self.fleet

    async def stop_fleet(self) -> None:
        self._fleet_stop.set()
        if self._fleet_task is not None:
            await asyncio.wait_for(self._fleet_task, 30)

    async def wait_emitted(self, readings: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.fleet is None or self.fleet.truth.emitted < readings:
            assert time.monotonic() < deadline, "fleet did not emit in time"
            self.children.check_alive()
            await asyncio.sleep(0.1)

    def accounts(self) -> dict[str, Any]:
        """The agent's own accounting, read from its buffer file (works while it runs)."""
        db = accounting.open_readonly(self.buffer_path)
        try:
            return accounting.report(db)
        finally:
            db.close()

    def dropped(self) -> int:
        """Readings the agent reports dropping by policy (not redelivered duplicates)."""
        try:
            report = self.accounts()
        except BufferStoreError:
            return 0
        return sum(
            n
            for acct in report["sources"].values()
            for reason, n in acct["dropped"].items()
            if reason != "duplicate"
        )

    async def settle(self, timeout: float = 90) -> Report:
        """Poll until the stream holds all but what the agent says it dropped, then report."""
        assert self.fleet is not None
        deadline = time.monotonic() + timeout
        while True:
            self.children.check_alive()
            report = compare(self.fleet.truth, await read_telemetry(self.js))
            if report.missing <= self.dropped() or time.monotonic() > deadline:
                return report
            await asyncio.sleep(0.5)

    async def wait_counts(self, want: Counter[Any], timeout: float = 120) -> StreamContents:
        """Poll the stream until it holds at least `want` readings per (site, device)."""
        deadline = time.monotonic() + timeout
        while True:
            contents = await read_telemetry(self.js)
            got = Counter({k: sum(len(a) for a in v) for k, v in contents.seqs.items()})
            if got >= want or time.monotonic() > deadline:
                return contents
            await asyncio.sleep(0.5)  # a polling period, bounded by the deadline

    async def reconnect_js(self) -> None:
        """After the cloud server restarted: a fresh client, so no state is carried over."""
        with contextlib.suppress(NatsError, OSError, TimeoutError):
            await self.nc.close()
        self.nc = await connect(self.cloud.client(), "rig")
        self.js = self.nc.jetstream()


def _sigkill(proc: Any) -> None:
    from gateway import process

    process.kill(proc)


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path, options: AgentOptions | None = None, duplicate_window_s: float = 120.0
) -> AsyncIterator[Rig]:
    cloud = NatsServer(tmp_path / "cloud", name="cloud", security=cloud_security(tmp_path))
    # A short ack_wait: the broker redelivers what a killed agent never acknowledged after
    # 3 s instead of 30 s, so the tests need not wait that long.
    edge = NatsServer(tmp_path / "edge", name="edge", mqtt=True, mqtt_options='ack_wait: "3s"')
    children = Children(tmp_path)
    await cloud.start()
    await edge.start()
    nc = await connect(cloud.client(), "rig")
    try:
        js = nc.jetstream()
        await ensure_streams(js, StreamSettings(duplicate_window_s=duplicate_window_s))
        r = Rig(tmp_path, cloud, edge, children, nc, js, options or AgentOptions())
        try:
            yield r
        finally:
            r._fleet_stop.set()
            if r._fleet_task is not None:
                r._fleet_task.cancel()
                with contextlib.suppress(BaseException):
                    await r._fleet_task
            await children.stop_all()
            with contextlib.suppress(NatsError, OSError, TimeoutError):
                await r.nc.close()
    finally:
        await edge.stop()
        await cloud.stop()

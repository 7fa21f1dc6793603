"""`gateway demo`: the whole data path on embedded defaults, and proof that it held.

    fleet (in-process, MQTT QoS 1) -> edge nats-server (MQTT listener)
      -> agent process (durable buffer) -> cloud nats-server (JetStream TELEMETRY)
      -> aggregator process -> AGG stream + KV -> live table here

At the end it reads the TELEMETRY stream back and compares it with the fleet's ground
truth; it exits 0 only with nothing missing, nothing duplicated and some windows closed.
Shutdown order: fleet, then (once the stream holds what was emitted) agent and
aggregator, then the servers; children are stopped by PID even on errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from firmware_sim.fleet import Fleet, FleetSettings
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from rich.console import Console
from rich.live import Live

from app.chaos import ChaosTargets, FaultInjector
from app.verify import Report, compare, read_stream, read_telemetry
from cloud.streams import ensure_streams
from cloud.up import api_tokens_file
from cloud.views.auth import create_token
from cloud.views.watch import Latest, follow_latest, render
from devices.catalog import load_catalog
from edge import accounting
from edge.errors import BufferStoreError
from gateway import process, subjects
from gateway.config import CloudConfig, NatsSettings
from gateway.connect import close, connect
from gateway.deadletter import ORIGINAL_SIZE, DeadLetterHeaders
from gateway.pki import ensure_http_cert, write_private
from gateway.security import CloudSecurity
from gateway.servers import NatsServer, free_port

SITE = "demo"
AGENT = "agent1"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    devices: int = 20
    duration: float | None = None
    json: bool = False
    rate_hz: float | None = None
    data_dir: Path | None = None
    keep: bool = False
    chaos: bool = False
    seed: int | None = None
    pack_percent: float | None = None  # devices sending packs; default 30 under chaos, else 0
    pack_readings: int = 100


# Under chaos: a share of the fleet reboots often with its seq restarting under a new boot
# (firmware_sim/profiles.toml), and the agent's data dir is a small tmpfs that can be filled.
CHAOS_PROFILE = "reboots"
CHAOS_PACK_PERCENT = 30.0
AGENT_TMPFS = "48m"


def agent_config_toml(data_dir: Path, nats: NatsSettings, mqtt_url: str) -> str:
    return f"""\
site = "{SITE}"
agent = "{AGENT}"
data_dir = "{data_dir}"

[nats]
url = "{nats.url}"
ca_file = "{nats.ca_file}"
creds_file = "{nats.creds_file}"

# The fleet publishes on sensors/<format>/<site>/<device>: one source per format, each
# with its own client id (one id is one persistent session).
[[sources]]
type = "mqtt"
url = "{mqtt_url}"
topics = ["sensors/json/#"]
format = "json"

[[sources]]
type = "mqtt"
url = "{mqtt_url}"
topics = ["sensors/senml/#"]
format = "senml"
client_id = "gw-{SITE}-{AGENT}-senml"

[batch]
max_readings = 1000
linger_ms = 200
"""


class Children:
    """The agent and aggregator processes, stopped by PID whatever happens."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.args: dict[str, tuple[str, ...]] = {}
        self.restarts = 0

    def start(self, name: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "app", *args]
        self.procs[name] = process.spawn(cmd, self.root / f"{name}.log")
        self.args[name] = args

    async def kill_and_restart(self, name: str) -> None:
        """SIGKILL (a power cut), then start it again with the same arguments."""
        proc = self.procs.pop(name)
        await asyncio.to_thread(process.kill, proc)
        self.start(name, *self.args[name])

    def revive(self, say: Any) -> None:
        """Under chaos, a child that exited is started again, as a supervisor would."""
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None:
                say(f"{name} exited with {proc.returncode}; starting it again")
                self.restarts += 1
                self.start(name, *self.args[name])

    async def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            await asyncio.to_thread(process.stop, proc, 15.0)

    async def stop_all(self) -> None:
        for name in list(self.procs):
            await self.stop(name)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}:\n"
                    + process.tail(self.root / f"{name}.log")
                )


async def _wait_agent_ready(nc: NatsClient, children: Children, timeout: float = 30) -> None:
    ready = asyncio.Event()

    async def on_status(msg: Any) -> None:
        if orjson.loads(msg.data).get("ready"):
            ready.set()

    sub = await nc.subscribe(subjects.status(SITE, AGENT), cb=on_status)
    deadline = time.monotonic() + timeout
    try:
        while not ready.is_set():
            children.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent not ready after {timeout:.0f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), 0.5)
    finally:
        await sub.unsubscribe()


@contextlib.asynccontextmanager
async def _demo_connection(settings: NatsSettings, say: Any) -> AsyncIterator[NatsClient]:
    """The demo's own cloud connection. Under chaos the cloud goes down on purpose: one line
    per new error, instead of nats-py's traceback at every reconnect attempt."""
    last = ""

    async def on_error(exc: Exception) -> None:
        nonlocal last
        text = f"{type(exc).__name__}: {exc}"
        if text != last:
            say(f"demo's cloud connection: {text}")
            last = text

    nc = await connect(settings, "demo", error_cb=on_error)
    try:
        yield nc
    finally:
        await close(nc)


class LiveView:
    """The live table: in place on a terminal, a snapshot every few seconds otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.latest: Latest = {}
        self.status = ""

    async def run(self, nc: NatsClient) -> None:
        if self.console.is_terminal:
            with Live(render(self.latest), console=self.console, refresh_per_second=4) as live:
                await follow_latest(nc, self.latest, lambda: live.update(self._table()))
        else:
            follower = asyncio.create_task(follow_latest(nc, self.latest, lambda: None))
            try:
                while True:
                    await asyncio.sleep(5)
                    self.console.print(self._table())
            finally:
                follower.cancel()

    def _table(self) -> Any:
        table = render(self.latest, limit=15)
        table.title = f"{table.title}   {self.status}"
        return table


async def _drain_to_stream(
    js: Any, fleet: Fleet, timeout: float, drops: Callable[[], dict[str, int]] | None = None
) -> Report:
    """Poll the stream until it holds everything the fleet emitted but what the agent
    reports dropping (`drops`: its own counts, by reason), or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        report = compare(fleet.truth, await read_telemetry(js), dropped=drops() if drops else None)
        if report.unaccounted == 0 or time.monotonic() > deadline:
            return report
        await asyncio.sleep(0.5)


async def _wait_windows_closed(js: Any, latest: Latest, timeout: float) -> int:
    """Wait until the aggregator has closed every window the live view shows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if latest and all(r.closed for r in latest.values()):
            break
        await asyncio.sleep(0.5)
    info = await js.stream_info(subjects.AGG_STREAM)
    return int(info.state.messages)


@contextlib.asynccontextmanager
async def _demo_root(opts: DemoOptions) -> AsyncIterator[Path]:
    root = opts.data_dir or Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        if not opts.keep and opts.data_dir is None:
            shutil.rmtree(root, ignore_errors=True)


async def demo(opts: DemoOptions, stop: asyncio.Event, console: Console) -> dict[str, Any]:
    async with _demo_root(opts) as root:
        security = CloudSecurity.ensure(root / "cloud-security")  # TLS + identities
        cloud = NatsServer(root / "cloud", name="cloud", security=security)
        # Under chaos the broker redelivers what a killed agent never acknowledged after
        # 5 s rather than its default 30 s, so the demo's drain does not wait that long.
        edge = NatsServer(
            root / "edge",
            name="edge-broker",
            mqtt=True,
            mqtt_options='ack_wait: "5s"' if opts.chaos else "",
        )
        children = Children(root)
        disk = _AgentDisk(root / "agent") if opts.chaos else None
        try:
            if disk is not None:
                disk.mount()
            await cloud.start()
            await edge.start()
            return await _run(opts, stop, console, root, cloud, edge, children, disk)
        finally:
            await children.stop_all()
            await edge.stop()
            await cloud.stop()
            if disk is not None:
                disk.unmount()


class _AgentDisk:
    """The agent's data dir on a small tmpfs of its own (root only), so that the chaos can
    fill it without filling anyone else's disk; otherwise `skipped` says why not."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False
        self.skipped = ""

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            self.skipped = "mounting a tmpfs for the agent's data dir needs root"
            return
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={AGENT_TMPFS}", "tmpfs", str(self.path)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        self.mounted = done.returncode == 0
        self.skipped = "" if self.mounted else f"mount failed: {done.stderr.strip()}"

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            self.mounted = False


async def _run(
    opts: DemoOptions,
    stop: asyncio.Event,
    console: Console,
    root: Path,
    cloud: NatsServer,
    edge: NatsServer,
    children: Children,
    disk: _AgentDisk | None = None,
) -> dict[str, Any]:
    say = console.log
    say(f"cloud nats-server (JetStream) on {cloud.url}; edge broker on {edge.mqtt_url}")
    cloud_cfg = CloudConfig()
    assert cloud.security is not None
    agent_creds = root / "agent.creds"  # the demo agent's own identity, as enrolled
    write_private(agent_creds, cloud.security.trust.enroll(SITE, AGENT).encode())
    agent_nats = cloud.client().model_copy(update={"creds_file": agent_creds})
    (root / "agent.toml").write_text(agent_config_toml(root / "agent", agent_nats, edge.mqtt_url))
    agg = cloud.client("aggregator")
    async with _demo_connection(cloud.client(), say) as nc:
        js = nc.jetstream()
        await ensure_streams(js, cloud_cfg.streams)
        children.start(
            "aggregator", "cloud", "aggregate", "--nats", cloud.url,
            "--ca", str(agg.ca_file), "--creds", str(agg.creds_file),
        )  # fmt: skip
        children.start("agent", "edge", "run", "--config", str(root / "agent.toml"))
        _start_dashboard(root, cloud.url, cloud.client("views"), children, say)
        await _wait_agent_ready(nc, children)
        say(f"agent ready; starting {opts.devices} devices")

        host, port = "127.0.0.1", edge.mqtt_port
        fleet = Fleet(_fleet_settings(opts, host, port), load_catalog())
        fleet_stop = asyncio.Event()
        view = LiveView(console)
        started = time.monotonic()
        injector = FaultInjector(
            children, cloud, edge, say, opts.seed, _chaos_targets(fleet, port, disk)
        )
        async with asyncio.TaskGroup() as tg:
            fleet_task = tg.create_task(fleet.run(fleet_stop), name="fleet")
            view_task = tg.create_task(
                _keep_viewing(view, nc) if opts.chaos else view.run(nc), name="live-view"
            )
            if opts.chaos:
                # Faults end 10 s before the fleet stops; all servers are up again by then.
                window = opts.duration - 10 if opts.duration else float("inf")
                gap = min(8.0, window / 9)  # room for every kind of fault in a short demo
                chaos_task = tg.create_task(
                    injector.run(stop, started + window, (gap / 2, gap)), name="chaos"
                )
            while not stop.is_set():
                elapsed = time.monotonic() - started
                if opts.duration is not None and elapsed >= opts.duration:
                    break
                if opts.chaos:
                    children.revive(say)
                else:
                    children.check_alive()
                view.status = (
                    f"t={elapsed:4.0f}s  devices={fleet.stats.connected}"
                    f"  emitted={fleet.truth.emitted}"
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
            say("stopping the fleet; waiting for the agent to forward everything")
            fleet_stop.set()
            if opts.chaos:
                await chaos_task
            await fleet_task
            buffer = root / "agent" / "buffer.sqlite3"
            drops = (lambda: agent_drops(buffer)) if opts.chaos else None
            report = await _drain_to_stream(js, fleet, 120 if opts.chaos else 30, drops)
            windows = await _wait_windows_closed(js, view.latest, timeout=15)
            view_task.cancel()
            chaos = await _chaos_summary(js, injector, children, fleet) if opts.chaos else {}
    return {
        **report.summary(),
        **_worst_devices(report),
        "windows": windows,
        "devices": opts.devices,
        "seconds": round(time.monotonic() - started, 1),
        **chaos,
    }


def _worst_devices(report: Report, n: int = 5) -> dict[str, Any]:
    """The devices with most readings not stored or doubled, as [not stored, duplicates];
    those not stored may be ones the agent reports dropped (`dropped` is fleet-wide)."""
    bad = sorted((d for d in report.devices if d.missing or d.duplicates), key=lambda d: -d.missing)
    if not bad:
        return {}
    return {"worst_devices": {d.device: [d.missing, d.duplicates] for d in bad[:n]}}


def _fleet_settings(opts: DemoOptions, host: str, port: int) -> FleetSettings:
    packs = opts.pack_percent
    if packs is None:
        packs = CHAOS_PACK_PERCENT if opts.chaos else 0.0
    return FleetSettings(
        host=host, port=port, devices=opts.devices, site=SITE, rate_hz=opts.rate_hz,
        profile=CHAOS_PROFILE if opts.chaos else "none",
        pack_percent=packs, pack_readings=opts.pack_readings,
    )  # fmt: skip


def _chaos_targets(fleet: Fleet, port: int, disk: _AgentDisk | None) -> ChaosTargets:
    device = fleet.device_names()[0]
    return ChaosTargets(
        mqtt_port=port,
        device_topic=f"sensors/json/{SITE}/{device}",  # the fleet's topic of a JSON device
        data_dir=disk.path if disk is not None and disk.mounted else None,
        disk_full_skipped=disk.skipped if disk is not None else "",
    )


def agent_drops(buffer: Path) -> dict[str, int]:
    """Readings the agent reports dropped, by reason, summed over its sources."""
    try:
        db = accounting.open_readonly(buffer)
    except BufferStoreError:
        return {}
    try:
        report = accounting.report(db)
    finally:
        db.close()
    out: dict[str, int] = {}
    for acct in report["sources"].values():
        for reason, n in acct["dropped"].items():
            out[reason] = out.get(reason, 0) + int(n)
    return out


async def oversized_dead_letters(js: Any) -> list[tuple[int, str]]:
    """(original size, reason) of every dead letter of a message of 1 MB or more."""
    found: list[tuple[int, str]] = []

    def handle(msg: Any) -> None:
        size = int((msg.headers or {}).get(ORIGINAL_SIZE, len(msg.data)))
        if size >= 1_000_000:
            found.append((size, DeadLetterHeaders.from_headers(msg.headers).reason))

    await read_stream(js, subjects.DLQ_STREAM, "dlq.>", handle, 64)
    return found


async def _chaos_summary(
    js: Any, injector: FaultInjector, children: Children, fleet: Fleet
) -> dict[str, Any]:
    dead = await oversized_dead_letters(js)
    return {
        "faults": injector.faults.total(),
        "faults_by_kind": dict(injector.faults),
        "faults_skipped": injector.skipped,
        "restarts": children.restarts,
        "reboots": fleet.engine.stats.faults["reboot"],
        "pack_devices": sum(g.n for g in fleet.engine.groups if g.k > 1),
        "oversized_sent": len(injector.oversized.sent),
        "oversized_refused_by_broker": injector.oversized.refused,
        "oversized_dead_letters": len(dead),
        "oversized_reasons": sorted({reason for _, reason in dead}),
    }


def _start_dashboard(
    root: Path, nats_url: str, views: NatsSettings, children: Children, say: Any
) -> None:
    """The HTTP API and dashboard (`gateway cloud serve`, in the views role), with a viewer
    token written to a 0600 file next to the demo's data, so it never appears in the demo's
    output or logs."""
    token = create_token(api_tokens_file(root / "cloud-api"), "viewer")[1]
    token_file = root / "dashboard-token"
    write_private(token_file, (token + "\n").encode())
    port = free_port()
    assert views.ca_file is not None
    https = ensure_http_cert(views.ca_file.parent)  # HTTPS from the demo cloud's own CA
    children.start(
        "dashboard", "cloud", "serve", "--nats", nats_url, "--http-port", str(port),
        "--ca", str(views.ca_file), "--creds", str(views.creds_file),
        "--data-dir", str(root / "cloud-api"),
        "--tls-cert", str(https.cert), "--tls-key", str(https.key),
    )  # fmt: skip
    say(
        f"dashboard on https://127.0.0.1:{port}/dashboard/ (CA {views.ca_file}; log in with "
        f"the token in {token_file})"
    )


async def _keep_viewing(view: LiveView, nc: NatsClient) -> None:
    """The live view, resumed after the cloud server it watches comes back."""
    while True:
        try:
            await view.run(nc)
        except (NatsError, TimeoutError) as exc:
            view.console.log(f"live view interrupted ({type(exc).__name__}); resuming")
            await asyncio.sleep(1.0)


def run_demo(opts: DemoOptions) -> int:
    console = Console(stderr=opts.json)
    if not console.is_terminal:
        # Piped or logged: rich would squeeze the table into 80 columns.
        console = Console(stderr=opts.json, width=130)

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await demo(opts, stop, console)

    result = asyncio.run(main())
    ok = result["missing"] == 0 and result["duplicates"] == 0 and result["windows"] > 0
    if opts.chaos:
        ok = ok and result["faults"] >= 3
        ok = ok and result["oversized_dead_letters"] >= result["oversized_sent"]
    result["ok"] = ok
    console.print(
        f"[bold]{'OK' if ok else 'FAILED'}[/]: emitted {result['emitted']} readings, "
        f"stored {result['stored']}, missing {result['missing']}, "
        f"duplicates {result['duplicates']}, windows closed {result['windows']}"
        + (
            f", faults injected {result['faults']} {result['faults_by_kind']}"
            f", dropped by the agent {result['dropped']}"
            + "".join(f", {k} skipped: {why}" for k, why in result["faults_skipped"].items())
            if opts.chaos
            else ""
        )
    )
    if opts.json:
        print(orjson.dumps(result).decode(), flush=True)
    return 0 if ok else 1

"""The edge agent: wires sources, decoders, batcher, buffer and uplink under one TaskGroup.

intake:    SourceMessage -> decode -> validate -> filter -> batcher (or a dead letter)
flusher:   batcher -> buffer.commit (one transaction) -> ack to the source
           (overflow policy `block`: a flush that does not fit is held, unacknowledged,
           and intake pauses until the uplink frees room: the broker's in-flight window
           then stops delivery, which is the backpressure)
uplink:    buffer -> JetStream (PubAck) -> buffer.delete
heartbeat: status.<site>.<agent>, with counts and buffer depth; actual state in FLEET_AGENTS
remote config: pushed revisions applied in place (`apply_config`), the buffer stays open
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from devices.catalog import load_catalog
from edge import accounting
from edge.batcher import Batcher, Flush
from edge.buffer import SourceCounts, SqliteBuffer
from edge.control.heartbeat import ActualState, AgentSnapshot, IntakeCounts
from edge.control.remote_config import RemoteConfig
from edge.errors import BufferStoreError
from edge.forwarding_metrics import ForwardingCollector
from edge.health import Health, HealthMonitor, UplinkStatus
from edge.heap import release_freed_heap
from edge.intake import Intake, IntakeStats, source_names
from edge.metrics import AgentMetrics, MetricsServer
from edge.sources import Source, SourceMessage, registry
from edge.sources.serial import SerialSource
from edge.uplink import Uplink
from gateway import __version__, permissions, subjects
from gateway.config import AgentConfig
from gateway.connect import close as close_nats
from gateway.records import BUNDLE_VERSION_ENV
from gateway.retry import connect_forever
from gateway.runtime import first_of

log = logging.getLogger(__name__)


class Agent:
    """Construct, then `await run(stop)`; nothing is opened before `run`."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.buffer = SqliteBuffer.from_settings(config.data_dir / "buffer.sqlite3", config.buffer)
        self._counts = SourceCounts()  # per source, for the open batch
        self._held: tuple[Flush, str, SourceCounts] | None = None  # block policy: not durable
        self._blocked = False
        self.metrics = AgentMetrics()
        self.intake: Intake | None = None
        self.metrics_server: MetricsServer | None = None
        self._queue: asyncio.Queue[SourceMessage] = asyncio.Queue()
        self._wake_uplink = asyncio.Event()
        self._wake_flusher = asyncio.Event()
        self._beat_now = asyncio.Event()
        self.uplink = Uplink(
            config.site, config.agent, config.uplink, self.buffer, self._wake_uplink
        )
        self.batcher: Batcher | None = None
        self.sources: list[Source] = []
        self.ready = asyncio.Event()
        self._nc: NatsClient | None = None
        self.remote = RemoteConfig(config)
        self._tasks: list[asyncio.Task[None]] = []  # every task, nested ones too: see stop
        self.actual = ActualState(config.site, config.agent)
        self.health = HealthMonitor(config.uplink.stall_after_s)
        self._nats_error = ""  # the last connection error, for health ("": none yet)

    async def run(self, stop: asyncio.Event) -> None:
        self._use_config(self.remote.load())
        self.buffer.open()
        self.batcher = Batcher(
            self.config.site, self.config.agent, self.config.batch, self.buffer.deliveries
        )
        self.intake = Intake(self.config, load_catalog(self.config.catalog), self.metrics)
        try:
            await self._run_tasks(stop)
        finally:
            await self._shutdown()

    async def _run_tasks(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tasks += [
                tg.create_task(self._intake(), name="intake"),
                tg.create_task(self._flusher(), name="flusher"),
                tg.create_task(self._cloud_link(), name="cloud-link"),
                tg.create_task(self._watch(), name="watch"),
            ]
            await self._start_metrics()
            await self._start_sources()
            if await first_of(self._sources_ready(), stop.wait()) == 0:
                self.ready.set()
                self._beat_now.set()
                log.info("agent %s/%s ready", self.config.site, self.config.agent)
                await stop.wait()
            await _cancel_until_done(self._tasks)

    async def _start_sources(self) -> None:
        base = f"gw-{self.config.site}-{self.config.agent}"
        names = source_names(self.config)
        for i, (name, settings) in enumerate(zip(names, self.config.sources, strict=True)):
            client_id = base if i == 0 else f"{base}-{i}"
            ctx = registry.SourceContext(name, client_id, self._queue.put_nowait)
            src = registry.build(settings, ctx)
            await src.start()
            self.sources.append(src)

    async def _sources_ready(self) -> None:
        """Every source subscribed (or its port open). A broker that is down keeps the agent
        from being ready, not from forwarding its buffer nor from stopping."""
        for src in self.sources:
            await src.ready.wait()

    async def _start_metrics(self) -> None:
        m = self.config.metrics
        if m.port is not None:
            self.metrics_server = MetricsServer(self.metrics, self.snapshot, m.host, m.port)
            await self.metrics_server.start()
            self.metrics.registry.register(ForwardingCollector(self.buffer, self.uplink))

    async def _cloud_link(self) -> None:
        """Connect to NATS (retrying: the agent buffers meanwhile), then forward and beat;
        connect again whenever the connection is closed for good (nats-py gives up on a
        connection the server closed, e.g. for a payload over its max_payload)."""
        cfg = self.config
        inbox = permissions.agent_inbox(cfg.site, cfg.agent)  # the only one it may read
        while True:
            nc = await connect_forever(
                cfg.nats,
                f"agent-{cfg.agent}",
                inbox,
                error_cb=self._on_nats_error,
                on_failure=self._note_nats_error,
            )
            self._nats_error = "connection lost; nats-py is reconnecting"
            self._nc = nc
            # The uplink returns only once the connection is closed for good.
            await first_of(
                self.uplink.run(nc), self._heartbeat(nc), self.remote.follow(nc, self.apply_config)
            )
            log.warning("the NATS connection was closed; connecting again")

    async def _on_nats_error(self, exc: Exception) -> None:
        """nats-py's error callback. Its default logs a traceback for every failed
        reconnect attempt (about 4 KB/s with the cloud down); the health monitor logs the
        change of state once instead (`_watch`)."""
        self._note_nats_error(exc)
        log.debug("nats: %s: %s", type(exc).__name__, exc)

    def _note_nats_error(self, exc: BaseException) -> None:
        self._nats_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def _use_config(self, cfg: AgentConfig) -> None:
        """The one path by which settings reach the running parts: each part takes its
        own section through its `reconfigure`. (Sources hold connections: `apply_config`
        restarts them around this call when theirs changed.)"""
        self.config = cfg
        self.buffer.reconfigure(cfg.buffer)
        self.uplink.reconfigure(cfg.uplink)
        self.health.stall_after_s = cfg.uplink.stall_after_s
        if self.batcher is not None:
            self.batcher.reconfigure(cfg.batch)
        if self.intake is not None:
            self.intake.reconfigure(cfg)

    async def apply_config(self, cfg: AgentConfig) -> None:
        """Apply a pushed config in place. The buffer stays open; sources are restarted
        only if their settings changed, after what they delivered is durable and acked."""
        self._drain_and_flush()
        restart = cfg.sources != self.config.sources
        if restart:
            for src in self.sources:
                await src.stop()
            self._drain_and_flush()  # arrived meanwhile: durable, the broker redelivers
            self.sources = []
        self._use_config(cfg)  # the queue is empty here: no message meets two configs
        if restart:
            await self._start_sources()
        self._beat_now.set()

    def _drain_and_flush(self) -> None:
        while not self._queue.empty():
            self._handle(self._queue.get_nowait())
        self._flush()

    async def _shutdown(self) -> None:
        """Make what is pending durable and ack it while the sources are still connected
        (an ack sent after the disconnect is lost, and the broker would redeliver readings
        that are already durable), then stop the sources and close the rest."""
        self._drain_and_flush()
        for src in self.sources:
            await src.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self._nc is not None:
            await self.uplink.forward_remaining(self._nc, self.config.uplink.publish_timeout_s)
            await close_nats(self._nc)
        self.buffer.close()

    # -- intake and flushing ---------------------------------------------------------------
    async def _intake(self) -> None:
        while True:
            if self._held is not None:
                await self._wait_for_room()
                continue
            msg = await self._queue.get()
            self._handle(msg)
            if self._batcher.full():
                self._flush()
            else:
                self._wake_flusher.set()

    def _handle(self, msg: SourceMessage) -> None:
        assert self.intake is not None, "agent is not running"
        if msg.session_reset:
            self._forget_deliveries(msg.source)
            return
        batched = self._batcher.pending_readings()
        dups = self.intake.stats.duplicates_dropped
        redelivered = self.intake.stats.redelivered
        self.intake.handle(msg, self._batcher)
        # per-source accounting (edge/accounting.py): what this message added to the batch
        self._counts.readings[msg.source] += self._batcher.pending_readings() - batched
        self._counts.duplicates[msg.source] += self.intake.stats.duplicates_dropped - dups
        self._counts.redelivered[msg.source] += self.intake.stats.redelivered - redelivered

    def _forget_deliveries(self, source: str) -> None:
        """The broker starts `source` afresh: no record of before may match a resend."""
        self._batcher.forget_source(source)
        if self._held is not None:
            self._held[0].deliveries.drop_source(source)
        self.buffer.forget_deliveries(source)
        log.info("%s: the broker holds no session for us; delivery records cleared", source)

    async def _flusher(self) -> None:
        while True:
            if self._held is not None:
                await self._wait_for_room()
                continue
            wait = self._batcher.seconds_until_due()
            if wait is None:
                self._wake_flusher.clear()
                await self._wake_flusher.wait()
                continue
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._flush()

    def _flush(self) -> None:
        if self._held is None:
            batch_id = self.buffer.next_batch_id(self.config.agent)
            flush = self._batcher.take(batch_id)
            if flush is None:
                return
            self._held = (flush, batch_id, self._counts)
            self._counts = SourceCounts()
        flush, batch_id, counts = self._held
        try:
            self.buffer.commit(flush.batch, batch_id, flush.dead_letters, flush.deliveries, counts)
        except BufferStoreError as exc:  # BufferFull, or a disk that refuses even drops
            if not self._blocked:
                self._blocked = True
                log.warning(
                    "%s: holding %d readings unacknowledged until the uplink drains",
                    exc,
                    flush.batch.readings if flush.batch else 0,
                )
            self._pause_serial(True)
            self._wake_uplink.set()
            return
        self._held = None
        if self._blocked:
            self._blocked = False
            self._pause_serial(False)
            log.info("buffer has room again; intake resumed")
        if flush.batch is not None:
            self.metrics.batches.inc()
            self.metrics.batched.inc(flush.batch.readings)
            self.metrics.batch_bytes.inc(len(flush.batch.payload))
        for ack in flush.acks:  # only now is every reading of these messages durable
            ack()
        if flush.batch is not None or flush.dead_letters:
            self._wake_uplink.set()

    def _pause_serial(self, pause: bool) -> None:
        """Block policy: serial has no acks to withhold, so its reads stop instead."""
        for src in self.sources:
            if not isinstance(src, SerialSource) or src.paused == pause:
                continue
            if pause:
                src.pause()
            else:
                src.resume()

    async def _wait_for_room(self) -> None:
        """Block policy: retry the held flush whenever the uplink has deleted something."""
        self.uplink.drained.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.uplink.drained.wait(), 1.0)
        self._flush()

    @property
    def _batcher(self) -> Batcher:
        assert self.batcher is not None, "agent is not running"
        return self.batcher

    # -- status ----------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Once a second: log what changed state (edge/health.py), and forget series that
        fell silent (also when no message arrives at all), returning their memory."""
        copies = self._batcher.copies
        forgotten = copies.forgotten
        while True:
            self.assess()
            copies.prune(time.monotonic())  # the batcher prunes too, as it takes a batch
            if copies.forgotten != forgotten:
                log.log(
                    logging.INFO if copies.forgotten - forgotten >= 1000 else logging.DEBUG,
                    "forgot %d series silent for over %.0fs; %d remembered",
                    copies.forgotten - forgotten,
                    copies.silent_s,
                    copies.series,
                )
                forgotten = copies.forgotten
                release_freed_heap()
            await asyncio.sleep(1.0)

    def assess(self) -> Health:
        nc = self._nc
        connected = nc is not None and nc.is_connected
        uplink = UplinkStatus(
            connected,
            "" if connected else self._nats_error,
            self.buffer.stats().batches,
            self.uplink.last_progress,
        )
        sources = {src.name: src.status() for src in self.sources}
        return self.health.assess(self.ready.is_set(), sources, uplink, time.monotonic())

    @property
    def stats(self) -> IntakeStats:
        assert self.intake is not None, "agent is not running"
        return self.intake.stats

    def snapshot(self) -> AgentSnapshot:
        buf = self.buffer.stats()
        s = self.stats
        health = self.assess()
        return AgentSnapshot(
            site=self.config.site,
            agent=self.config.agent,
            version=__version__,
            bundle=os.environ.get(BUNDLE_VERSION_ENV, ""),
            pid=os.getpid(),
            config_revision=self.remote.revision,
            last_error=self.remote.error or self._source_error(),
            ready=health.ready,
            problems=health.problems,
            time_ns=time.time_ns(),
            intake=IntakeCounts(
                s.messages,
                s.readings,
                s.duplicates_dropped,
                dict(s.dead_letters),
                dict(s.filtered),
                dict(s.device_events),
            ),
            buffer=buf,
            uplink=self.uplink.metrics(buf.readings),
            blocked=self._held is not None,
            accounting=accounting.report(self.buffer.connection),
        )

    def _source_error(self) -> str:
        """The first source's failure to connect (e.g. a TLS refusal), for status/healthz."""
        for src in self.sources:
            status = src.status()
            if not status.up and status.detail:
                return f"{src.name}: {status.detail}"
        return ""

    async def _heartbeat(self, nc: NatsClient) -> None:
        subject = subjects.status(self.config.site, self.config.agent)
        while True:
            with contextlib.suppress(NatsError, OSError):
                snap = self.snapshot()
                await nc.publish(subject, snap.to_json())
                await self.actual.report(nc, snap)
            self._beat_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.config.uplink.heartbeat_s)


async def _cancel_until_done(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel, and cancel again while any task still runs: on Python 3.11 `asyncio.wait_for`
    (inside nats-py's connect and requests) swallows a cancellation that arrives as it
    completes, and a TaskGroup cancels its children only once, so a stop could hang."""
    while pending := [t for t in tasks if not t.done()]:
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=1.0)

"""The edge agent: wires sources, decoders, batcher, buffer and uplink under one TaskGroup.

intake:    SourceMessage -> decoder -> batcher (readings or a dead letter)
flusher:   batcher -> buffer.commit (one transaction) -> ack to the source
           (overflow policy `block`: a flush that does not fit is held, unacknowledged,
           and intake pauses until the uplink frees room: the broker's in-flight window
           then stops delivery, which is the backpressure)
uplink:    buffer -> JetStream (PubAck) -> buffer.delete
heartbeat: status.<site>.<agent>, with counts and buffer depth
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from edge import accounting
from edge.batcher import Batcher, Flush
from edge.buffer import DeadLetter, Intake, SqliteBuffer
from edge.decoders import DECODERS
from edge.errors import BufferFull, DecodeError
from edge.sources import SourceMessage
from edge.sources.mqtt import MqttSource
from edge.uplink import Uplink, connect
from gateway import __version__, subjects
from gateway.config import AgentConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class IntakeStats:
    messages: int = 0
    readings: int = 0
    duplicates_dropped: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)


class Agent:
    """Construct, then `await run(stop)`; nothing is opened before `run`."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.buffer = SqliteBuffer(
            config.data_dir / "buffer.sqlite3",
            max_bytes=config.buffer.max_bytes,
            durability=config.buffer.durability,
            overflow=config.buffer.overflow,
            max_age_s=config.buffer.max_age_s,
        )
        self._intake_counts = Intake()  # per source, for the open batch
        self._held: tuple[Flush, str, Intake] | None = None  # block policy: not yet durable
        self.stats = IntakeStats()
        self._queue: asyncio.Queue[SourceMessage] = asyncio.Queue()
        self._wake_uplink = asyncio.Event()
        self._wake_flusher = asyncio.Event()
        self._beat_now = asyncio.Event()
        self.uplink = Uplink(config, self.buffer, self._wake_uplink)
        self.batcher: Batcher | None = None
        self.sources: list[MqttSource] = []
        self.ready = asyncio.Event()
        self._nc: NatsClient | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self.buffer.open()
        self.batcher = Batcher(
            self.config.site,
            self.config.agent,
            self.config.batch,
            self.buffer.high_water,
            self.buffer.holes,
        )
        try:
            await self._run_tasks(stop)
        finally:
            await self._shutdown()

    async def _run_tasks(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._intake(), name="intake"),
                tg.create_task(self._flusher(), name="flusher"),
                tg.create_task(self._cloud_link(), name="cloud-link"),
            ]
            await self._start_sources()
            self.ready.set()
            self._beat_now.set()
            log.info("agent %s/%s ready", self.config.site, self.config.agent)
            await stop.wait()
            for t in tasks:
                t.cancel()

    async def _start_sources(self) -> None:
        client_id_base = f"gw-{self.config.site}-{self.config.agent}"
        for i, settings in enumerate(self.config.sources):
            name = f"mqtt{i}"
            client_id = settings.client_id or (
                client_id_base if i == 0 else f"{client_id_base}-{i}"
            )
            src = MqttSource(name, settings, client_id, self._queue.put_nowait)
            await src.start()
            self.sources.append(src)
        for src in self.sources:
            await src.subscribed.wait()

    async def _cloud_link(self) -> None:
        """Connect to NATS (retrying: the agent buffers meanwhile), then forward and beat."""
        nc = await connect(
            self.config.nats.url, f"agent-{self.config.agent}", self.config.nats.connect_timeout_s
        )
        self._nc = nc
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.uplink.run(nc), name="uplink")
            tg.create_task(self._heartbeat(nc), name="heartbeat")

    async def _shutdown(self) -> None:
        """Make what is pending durable and ack it while the sources are still connected
        (an ack sent after the disconnect is lost, and the broker would redeliver readings
        that are already durable), then stop the sources and close the rest."""
        while not self._queue.empty():
            self._handle(self._queue.get_nowait())
        self._flush()
        for src in self.sources:
            await src.stop()
        if self._nc is not None:
            await self.uplink.forward_remaining(self._nc, self.config.uplink.publish_timeout_s)
            with contextlib.suppress(NatsError, TimeoutError, OSError):
                await self._nc.drain()
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
        self.stats.messages += 1
        decode = DECODERS[self._source_format(msg.source)]
        try:
            readings = decode(msg.payload, msg.topic)
        except DecodeError as exc:
            self.stats.dead_letters[exc.reason] += 1
            letter = DeadLetter(msg.source, exc.reason, exc.detail, msg.payload)
            self._batcher.add_dead_letter(letter, msg.ack)
            return
        self.stats.readings += len(readings)
        dups = self._batcher.add(readings, msg.ack)
        self.stats.duplicates_dropped += dups
        self._intake_counts.readings[msg.source] += len(readings) - dups
        self._intake_counts.duplicates[msg.source] += dups

    def _source_format(self, source: str) -> str:
        return self.config.sources[int(source.removeprefix("mqtt"))].format

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
            self._held = (flush, batch_id, self._intake_counts)
            self._intake_counts = Intake()
        flush, batch_id, counts = self._held
        try:
            self.buffer.commit(
                flush.batch, batch_id, flush.dead_letters, flush.high_water, counts, flush.holes
            )
        except BufferFull as exc:
            log.warning(
                "%s: holding %d readings unacknowledged until the uplink drains",
                exc,
                flush.batch.readings if flush.batch else 0,
            )
            self._wake_uplink.set()
            return
        self._held = None
        for ack in flush.acks:  # only now is every reading of these messages durable
            ack()
        if flush.batch is not None or flush.dead_letters:
            self._wake_uplink.set()

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
    def snapshot(self) -> dict[str, Any]:
        buf = self.buffer.stats()
        return {
            "site": self.config.site,
            "agent": self.config.agent,
            "version": __version__,
            "ready": self.ready.is_set(),
            "time_ns": time.time_ns(),
            "intake": {
                "messages": self.stats.messages,
                "readings": self.stats.readings,
                "duplicates_dropped": self.stats.duplicates_dropped,
                "dead_letters": dict(self.stats.dead_letters),
            },
            "buffer": asdict(buf),
            "uplink": self.uplink.metrics(buf.readings),
            "blocked": self._held is not None,
            "accounting": accounting.report(self.buffer.connection),
        }

    async def _heartbeat(self, nc: NatsClient) -> None:
        subject = subjects.status(self.config.site, self.config.agent)
        while True:
            with contextlib.suppress(NatsError, OSError):
                await nc.publish(subject, orjson.dumps(self.snapshot()))
            self._beat_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.config.uplink.heartbeat_s)

"""The agent's Prometheus metrics and its /metrics and /healthz endpoint.

Each agent has its own registry (several agents can run in one test process). The HTTP
endpoint is a few lines on asyncio's own server, bound to loopback only, so it lives and
dies inside the agent's TaskGroup like everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.control.heartbeat import AgentSnapshot

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SourceTally:
    """What one source delivered: counted for every message, so plain integers."""

    messages: int = 0
    decoded: int = 0  # readings


class SourceTallies(Collector):
    """`gateway_agent_messages_total` and `gateway_agent_readings_decoded_total` by source,
    read at scrape time. Two `Counter.inc` (each takes a lock) per message were about 3 %
    of the agent's CPU at 1,000 messages/s (bench/frugality.py); everything here runs on
    the event loop, the scrape included, so no lock is needed."""

    def __init__(self) -> None:
        self.by_source: dict[str, SourceTally] = {}

    def of(self, source: str) -> SourceTally:
        return self.by_source.setdefault(source, SourceTally())

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "gateway_agent_messages", "Messages received, by source", labels=["source"]
        )
        decoded = CounterMetricFamily(
            "gateway_agent_readings_decoded", "Readings decoded, by source", labels=["source"]
        )
        for source, tally in self.by_source.items():
            messages.add_metric([source], tally.messages)
            decoded.add_metric([source], tally.decoded)
        yield messages
        yield decoded


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sources = SourceTallies()
        r.register(self.sources)
        self.rejected = Counter(
            "gateway_agent_dead_letters", "Dead letters, by reason", ["reason"], registry=r
        )
        self.filtered = Counter(
            "gateway_agent_readings_filtered", "Readings dropped, by filter", ["filter"], registry=r
        )
        self.redelivered = Counter(
            "gateway_agent_messages_redelivered",
            "Messages proven to be broker redeliveries of ones already taken"
            " (DUP set, same packet id and content: edge/dedupe.py); acknowledged, dropped",
            ["source"],
            registry=r,
        )
        self.copies = Counter(
            "gateway_agent_readings_duplicate",
            "Readings dropped as exact copies of a recent one (same series, seq, event time"
            " and value: sent twice by the device)",
            registry=r,
        )
        self.batched = Counter("gateway_agent_readings_batched", "Readings in batches", registry=r)
        self.batches = Counter("gateway_agent_batches", "Batches formed", registry=r)
        self.batch_bytes = Counter("gateway_agent_batch_bytes", "Bytes of batches", registry=r)

    def value(self, name: str, **labels: str) -> float:
        """A current sample value (for tests and status): `gateway_agent_messages_total`."""
        return self.registry.get_sample_value(name, labels) or 0.0


class MetricsServer:
    """GET /metrics (Prometheus text format) and GET /healthz (JSON status)."""

    def __init__(
        self, metrics: AgentMetrics, health: Callable[[], AgentSnapshot], host: str, port: int
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.host = host
        self.port = port  # 0 until started with port 0, then the port chosen
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            status, ctype, body = self._route(request[:4], path)
            writer.write(
                b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close"
                b"\r\n\r\n" % (status, ctype.encode(), len(body)) + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass  # a client that went away or sent junk: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _route(self, method: bytes, path: bytes) -> tuple[bytes, str, bytes]:
        if method != b"GET ":
            return b"405 Method Not Allowed", "text/plain", b"GET only\n"
        path = path.split(b"?", 1)[0]
        if path == b"/metrics":
            return b"200 OK", CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == b"/healthz":
            status = self.health()
            code = b"200 OK" if status.ready else b"503 Service Unavailable"
            return code, "application/json", status.to_json()
        return b"404 Not Found", "text/plain", b"try /metrics or /healthz\n"

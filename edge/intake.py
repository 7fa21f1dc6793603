"""The agent's intake: one source message -> decode -> privacy -> validate -> filter ->
batcher. A source's privacy rules come first, so nothing they drop or coarsen is seen,
in its original form, by any later step (dead letters of such a source carry no payload).

Whatever is refused at any step becomes a dead letter carrying the raw bytes and a
reason; the message's acknowledgement joins the open batch either way, so it is sent
only once that batch (and its dead letters) is durable. Counts go to the Prometheus
metrics and to `IntakeStats` (the heartbeat's view).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from devices.catalog import Catalog
from edge.batcher import Batcher
from edge.buffer import DeadLetter
from edge.decoders import (
    COLUMN_DECODERS,
    ColumnDecoder,
    Context,
    Decoder,
    SeriesColumns,
    build_decoder,
)
from edge.dedupe import digest
from edge.errors import DecodeError
from edge.filters import FilterChain, Privacy, build_chain, build_privacy
from edge.metrics import AgentMetrics
from edge.sources import SourceMessage
from edge.validation import Validator
from gateway.config import AgentConfig, MappingSettings, MqttSourceSettings, SourceSettings


@dataclass(slots=True)
class IntakeStats:
    messages: int = 0
    readings: int = 0
    duplicates_dropped: int = 0  # readings: exact copies a device sent twice
    redelivered: int = 0  # messages: broker redeliveries of ones already taken
    dead_letters: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)
    device_events: Counter[str] = field(default_factory=Counter)  # Sparkplug B births, ...


@dataclass(frozen=True, slots=True)
class _SourcePlan:
    decoder: Decoder
    columns: ColumnDecoder | None  # the same decoder, giving columns per series
    topic_device: bool  # MQTT: the default device is the topic's last level
    device: str | None  # serial: the configured device
    privacy: Privacy | None  # the source's own rules
    messages: Any  # the source's pre-labelled counters
    decoded: Any


def _mapping(s: SourceSettings) -> MappingSettings | None:
    return s.mapping if isinstance(s, MqttSourceSettings) else None


def source_names(config: AgentConfig) -> list[str]:
    """`mqtt0`, `serial1`, ...: the type and position of each configured source."""
    return [f"{s.type}{i}" for i, s in enumerate(config.sources)]


class Intake:
    """Reads the `sources`, `validation` and `filters` sections of the config (and `site`,
    which is fixed); `reconfigure` rebuilds only the parts whose section changed, so a
    filter keeps its state through a push that leaves the filters as they were."""

    def __init__(self, config: AgentConfig, catalog: Catalog, metrics: AgentMetrics) -> None:
        self.site = config.site
        self.catalog = catalog
        self.metrics = metrics
        self.stats = IntakeStats()
        self.config = config
        self.validator = Validator(catalog, config.validation)
        self.filters: FilterChain = build_chain(config.filters)
        self._plans = self._make_plans(config)

    def reconfigure(self, config: AgentConfig) -> None:
        """Apply pushed sources, validation and filters; call between messages."""
        old, self.config = self.config, config
        if config.validation != old.validation:
            self.validator = Validator(self.catalog, config.validation)
        if config.filters != old.filters:
            self.filters = build_chain(config.filters)
        if config.sources != old.sources:
            self._plans = self._make_plans(config)

    def _make_plans(self, config: AgentConfig) -> dict[str, _SourcePlan]:
        return {
            name: _SourcePlan(
                build_decoder(f"sources.{i}.mapping", s.format, _mapping(s)),
                None if _mapping(s) else COLUMN_DECODERS.get(s.format),
                isinstance(s, MqttSourceSettings),
                None if isinstance(s, MqttSourceSettings) else s.device,
                build_privacy(s.privacy),
                self.metrics.messages.labels(name),
                self.metrics.decoded.labels(name),
            )
            for i, (name, s) in enumerate(zip(source_names(config), config.sources, strict=True))
        }

    def handle(self, msg: SourceMessage, batcher: Batcher) -> None:
        plan = self._plans[msg.source]
        self.stats.messages += 1
        plan.messages.inc()
        content = digest(msg.topic, msg.payload) if msg.packet_id else b""
        if batcher.redelivered(msg.source, msg.packet_id, msg.dup, content, msg.connection):
            self.stats.redelivered += 1
            self.metrics.redelivered.labels(msg.source).inc()
        elif msg.problem:
            self._reject(msg, batcher, msg.problem, "refused by the source")
        else:
            self._accept(msg, plan, batcher)
        batcher.add_ack(msg.ack)

    def _context(self, msg: SourceMessage, plan: _SourcePlan) -> Context:
        if plan.topic_device:
            return Context.for_topic(self.site, msg.topic, msg.received_ns, msg.reply)
        return Context(self.site, msg.received_ns, msg.topic, plan.device)

    def _accept_columns(self, msg: SourceMessage, plan: _SourcePlan, batcher: Batcher) -> bool:
        """Packs of many readings: decoded, validated and batched as columns per series.
        False if this pack must go reading by reading."""
        assert plan.columns is not None
        try:
            series = plan.columns(msg.payload, self._context(msg, plan))
        except DecodeError as exc:
            self._reject(msg, batcher, exc.reason, exc.detail)
            return True
        if series is None:
            return False
        n = sum(len(cols) for cols in series)
        self.stats.readings += n
        plan.decoded.inc(n)
        if plan.privacy is not None:
            series = self._private(plan.privacy, series)
        for cols in series:
            if cols.site != self.site:
                detail = self._foreign(cols.site, cols.device, cols.metric)
                for _ in range(len(cols)):
                    self._reject(msg, batcher, "foreign_site", detail)
                continue
            check = self.validator.check_series(cols, msg.received_ns)
            for _row, reason, detail in check.rejects:
                self._reject(msg, batcher, reason, f"{cols.device}/{cols.metric}: {detail}")
            dups = batcher.add_series(cols, check)
            if dups:
                self.stats.duplicates_dropped += dups
                self.metrics.copies.inc(dups)
        return True

    def _accept(self, msg: SourceMessage, plan: _SourcePlan, batcher: Batcher) -> None:
        if plan.columns is not None and not self.filters:
            if self._accept_columns(msg, plan, batcher):
                return
        ctx = self._context(msg, plan)
        try:
            readings = plan.decoder(msg.payload, ctx)
        except DecodeError as exc:
            self._reject(msg, batcher, exc.reason, exc.detail)
            return
        finally:
            self._count_events(plan.decoder)
        self.stats.readings += len(readings)
        plan.decoded.inc(len(readings))
        check, filters, privacy = self.validator.check, self.filters, plan.privacy
        for decoded in readings:
            r = decoded if privacy is None else privacy.apply(decoded)
            if r is None:
                continue
            if r.site != self.site:
                detail = self._foreign(r.site, r.device, r.metric)
                self._reject(msg, batcher, "foreign_site", detail)
                continue
            try:
                checked = check(r, msg.received_ns)
            except DecodeError as exc:
                self._reject(msg, batcher, exc.reason, f"{r.device}/{r.metric}: {exc.detail}")
                continue
            passed = filters.apply(checked.reading) if filters else checked.reading
            if passed is None:
                continue
            if not batcher.add_one(passed, checked.original_time_ns):
                self.stats.duplicates_dropped += 1
                self.metrics.copies.inc()
        if filters:
            self._count_filtered(self.filters.dropped)
        if privacy is not None and privacy.dropped:
            self._count_filtered(privacy.dropped)

    def _foreign(self, site: str, device: str, metric: str) -> str:
        """Why a reading of another site is refused: a batch carries the agent's one site,
        and the agent's identity may publish only its own (docs/security.md), so storing it
        would put it under the wrong site and merge it with this site's devices."""
        return f"{device}/{metric}: site {site!r} is not this agent's site {self.site!r}"

    def _count_events(self, decoder: Decoder) -> None:
        """Device events a stateful decoder counted (Sparkplug B births, deaths, rebirth
        requests), into the agent's stats."""
        events: Counter[str] | None = getattr(decoder, "events", None)
        if events:
            self.stats.device_events.update(events)
            events.clear()

    def _private(self, privacy: Privacy, series: list[SeriesColumns]) -> list[SeriesColumns]:
        kept = [c for c in map(privacy.apply_series, series) if c is not None]
        if privacy.dropped:
            self._count_filtered(privacy.dropped)
        return kept

    def _count_filtered(self, dropped: Counter[str]) -> None:
        for name, n in dropped.items():
            self.stats.filtered[name] += n
            self.metrics.filtered.labels(name).inc(n)
        dropped.clear()

    def _reject(self, msg: SourceMessage, batcher: Batcher, reason: str, detail: str) -> None:
        self.stats.dead_letters[reason] += 1
        self.metrics.rejected.labels(reason).inc()
        payload = msg.payload
        privacy = self._plans[msg.source].privacy
        if privacy is not None and privacy.withhold_dead_letters and payload:
            payload, detail = b"", f"{detail} ({len(msg.payload)} bytes withheld: privacy rules)"
        batcher.add_dead_letter(DeadLetter(msg.source, reason, detail, payload))

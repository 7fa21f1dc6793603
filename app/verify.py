"""Compare what a fleet emitted (ground truth) with what TELEMETRY and DLQ hold.

The counts come from reading the streams themselves, batch by batch and dead letter by
dead letter, never from counters kept by the agent. Per device: valid readings missing,
duplicated or altered; readings that should have been dead letters but were stored; and
deliberately invalid readings missing from the dead letters (or dead letters nobody
expected). Noise that names no reading (garbage, frames cut short) is matched by its bytes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from firmware_sim.ground_truth import ATTRIBUTABLE, GroundTruth, payload_digest, reading_digest
from firmware_sim.unnumbered import unnumbered_seqs
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from app.deadletters import attribute
from gateway import codec, subjects
from gateway.deadletter import DeadLetterHeaders
from gateway.errors import CodecError

Key = tuple[str, str]


@dataclass(slots=True)
class StreamContents:
    """Per (site, device): every seq and value found, duplicates included."""

    seqs: dict[Key, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    values: dict[Key, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    messages: int = 0
    undecodable: int = 0

    def add(self, batch: codec.Batch) -> None:
        times = _device_times(batch)
        for idx, (device, metric, _unit) in enumerate(batch.series):
            mask = batch.series_index == idx
            key = (batch.site, device)
            seq, value = batch.seq[mask], batch.value[mask]
            unnumbered = seq < 0  # formats without a seq: named by metric, time, value
            if unnumbered.any():
                named = unnumbered_seqs(metric, times[mask], value)
                seq = np.where(unnumbered, named, seq)
            self.seqs[key].append(seq)
            self.values[key].append(value)


def _device_times(batch: codec.Batch) -> np.ndarray:
    """Event times as the devices sent them (before a clock correction)."""
    if not batch.original_time_ns:
        return batch.time_ns
    times = batch.time_ns.copy()
    for row, t in batch.original_time_ns.items():
        times[row] = t
    return times


@dataclass(slots=True)
class DeadLetterContents:
    """Per (site, device): the distinct seqs dead-lettered; other dead letters by payload."""

    seqs: dict[Key, set[int]] = field(default_factory=lambda: defaultdict(set))
    unattributed: set[str] = field(default_factory=set)  # payload digests
    reasons: Counter[str] = field(default_factory=Counter)
    messages: int = 0

    downstream: int = 0  # the cloud's own dead letters about readings already stored

    def add(self, subject: str, payload: bytes, reason: str, source: str = "") -> None:
        """One dead letter; `source` is its `DeadLetterHeaders.source`. Those the
        aggregator writes (source `telemetry.…`: late readings, say) are about readings
        TELEMETRY already holds, not about what the devices sent, so they are set apart."""
        if source.startswith("telemetry."):
            self.downstream += 1
            return
        self.messages += 1
        self.reasons[reason] += 1
        parts = subject.split(".")
        site = parts[1] if len(parts) > 1 else ""
        found = attribute(payload, site)
        if not found:
            self.unattributed.add(payload_digest(payload))
        for s, device, seq in found:
            self.seqs[(s, device)].add(seq)


async def read_stream(
    js: JetStreamContext, stream: str, subject: str, handle: Callable[[Any], None], fetch: int
) -> None:
    """Hand every message now in `stream` (matching `subject`) to `handle`, in order."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0
        ),
    )
    try:
        last = info.state.last_seq
        while True:
            msgs = await sub.fetch(fetch, timeout=5.0)
            for msg in msgs:
                handle(msg)
            if msgs[-1].metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()


async def read_telemetry(
    js: JetStreamContext, subject: str = "telemetry.>", fetch: int = 512
) -> StreamContents:
    """Read every message now in TELEMETRY (matching `subject`) with an ephemeral consumer."""
    contents = StreamContents()

    def handle(msg: Any) -> None:
        contents.messages += 1
        try:
            contents.add(codec.decode(msg.data))
        except CodecError:
            contents.undecodable += 1

    await read_stream(js, subjects.TELEMETRY_STREAM, subject, handle, fetch)
    return contents


async def read_dead_letters(
    js: JetStreamContext, subject: str = "dlq.>", fetch: int = 512
) -> DeadLetterContents:
    """Read every dead letter now in DLQ (matching `subject`)."""
    dead = DeadLetterContents()

    def handle(msg: Any) -> None:
        letter = DeadLetterHeaders.from_headers(msg.headers)
        dead.add(msg.subject, msg.data, letter.reason, letter.source)

    await read_stream(js, subjects.DLQ_STREAM, subject, handle, fetch)
    return dead


@dataclass(frozen=True, slots=True)
class DeviceReport:
    site: str
    device: str
    emitted: int
    stored: int
    missing: int
    duplicates: int
    unexpected: int
    altered: bool
    invalid_stored: int = 0  # deliberately invalid readings found in TELEMETRY
    dead_expected: int = 0  # invalid readings whose dead letter names device and seq
    dead_missing: int = 0
    dead_unexpected: int = 0  # dead letters of this device nobody made invalid

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.duplicates or self.unexpected or self.altered
            or self.invalid_stored or self.dead_missing or self.dead_unexpected
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Report:
    emitted: int
    stored: int
    missing: int
    duplicates: int
    unexpected: int
    altered: int
    devices: list[DeviceReport]
    invalid_stored: int = 0
    dead_expected: int = 0
    dead_found: int = 0
    dead_missing: int = 0
    dead_unexpected: int = 0
    noise_expected: int = 0  # garbage and truncated messages, matched by their bytes
    noise_found: int = 0
    noise_missing: int = 0
    noise_unexpected: int = 0
    checked_dead_letters: bool = False
    # Readings the agent reports it dropped by policy (full disk, overflow), by reason;
    # None when its accounting was not read. Duplicates it refused are not among them.
    dropped: dict[str, int] | None = None

    @property
    def dropped_total(self) -> int:
        return sum((self.dropped or {}).values())

    @property
    def unaccounted(self) -> int:
        """Readings neither stored nor reported dropped by the agent: the real losses.
        The agent counts drops per source, not per device, so this holds fleet-wide."""
        return max(0, self.missing - self.dropped_total)

    @property
    def ok(self) -> bool:
        ok = self.unaccounted == 0 and self.duplicates == 0 and self.altered == 0
        if self.checked_dead_letters:
            ok = ok and self.unexpected == 0 and self.invalid_stored == 0
            ok = ok and self.dead_missing == 0 and self.dead_unexpected == 0
            ok = ok and self.noise_missing == 0 and self.noise_unexpected == 0
        return ok

    def summary(self) -> dict[str, int]:
        out = {
            "emitted": self.emitted,
            "stored": self.stored,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "altered": self.altered,
        }
        if self.dropped is not None:
            out |= {"missing": self.unaccounted, "not_stored": self.missing}
            out |= {"dropped": self.dropped_total}
            out |= {f"dropped_{reason}": n for reason, n in sorted(self.dropped.items())}
        if self.checked_dead_letters:
            out |= {
                "invalid_stored": self.invalid_stored,
                "dead_expected": self.dead_expected,
                "dead_found": self.dead_found,
                "dead_missing": self.dead_missing,
                "dead_unexpected": self.dead_unexpected,
                "noise_expected": self.noise_expected,
                "noise_found": self.noise_found,
                "noise_missing": self.noise_missing,
                "noise_unexpected": self.noise_unexpected,
            }
        return out


def compare(
    truth: GroundTruth,
    contents: StreamContents,
    dead: DeadLetterContents | None = None,
    dropped: dict[str, int] | None = None,
) -> Report:
    """Compare; with `dead`, also check the dead letters against the invalid readings;
    with `dropped` (the agent's own drop counts by reason), a reading not stored is a loss
    only beyond what the agent reports dropping."""
    empty = DeadLetterContents()
    keys = set(truth.devices) | set(contents.seqs) | (set(dead.seqs) if dead else set())
    reports = [_compare_device(key, truth, contents, dead or empty) for key in sorted(keys)]
    noise = truth.noise()
    found = dead.unattributed if dead else set()
    return Report(
        emitted=sum(r.emitted for r in reports),
        stored=sum(r.stored for r in reports),
        missing=sum(r.missing for r in reports),
        duplicates=sum(r.duplicates for r in reports),
        unexpected=sum(r.unexpected for r in reports),
        altered=sum(r.altered for r in reports),
        devices=reports,
        invalid_stored=sum(r.invalid_stored for r in reports),
        dead_expected=sum(r.dead_expected for r in reports),
        dead_found=sum(len(s) for s in dead.seqs.values()) if dead else 0,
        dead_missing=sum(r.dead_missing for r in reports),
        dead_unexpected=sum(r.dead_unexpected for r in reports),
        noise_expected=len(noise),
        noise_found=len(found),
        noise_missing=len(noise - found),
        noise_unexpected=len(found - noise),
        checked_dead_letters=dead is not None,
        dropped=None if dropped is None else {k: v for k, v in dropped.items() if k != "duplicate"},
    )


def _compare_device(
    key: Key, truth: GroundTruth, contents: StreamContents, dead: DeadLetterContents
) -> DeviceReport:
    t = truth.devices.get(key)
    parts = contents.seqs.get(key, [])
    seqs = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    values = np.concatenate(contents.values[key]) if parts else np.empty(0, dtype=np.float64)
    uniq, first_idx = np.unique(seqs, return_index=True)
    duplicates = int(seqs.shape[0] - uniq.shape[0])
    dead_seqs = dead.seqs.get(key, set())
    if t is None or (t.count == 0 and not t.invalid):
        return DeviceReport(
            key[0], key[1], 0, int(seqs.shape[0]), 0, duplicates, int(uniq.shape[0]), False,
            dead_unexpected=len(dead_seqs),
        )  # fmt: skip
    invalid = np.array(sorted(s for s, _ in t.invalid), dtype=np.int64)
    is_invalid = np.isin(uniq, invalid)
    in_range = (uniq >= t.first_seq) & (uniq <= t.last_seq) & ~is_invalid
    if t.count == 0:
        in_range[:] = False
    found = int(in_range.sum())
    digest = reading_digest(uniq[in_range], values[first_idx][in_range])
    missing = t.count - found
    expected_dead = {s for s, kind in t.invalid if kind in ATTRIBUTABLE}
    return DeviceReport(
        site=key[0],
        device=key[1],
        emitted=t.count,
        stored=int(seqs.shape[0]),
        missing=missing,
        duplicates=duplicates,
        unexpected=int((~in_range & ~is_invalid).sum()),
        altered=missing == 0 and digest != t.digest,
        invalid_stored=int(is_invalid.sum()),
        dead_expected=len(expected_dead),
        dead_missing=len(expected_dead - dead_seqs),
        dead_unexpected=len(dead_seqs - {int(s) for s in invalid}),
    )

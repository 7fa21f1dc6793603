"""Compare what a fleet emitted (ground truth) with what the TELEMETRY stream holds.

The counts come from reading the stream itself, batch by batch, never from counters
kept by the agent.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from gateway import codec, subjects
from gateway.errors import CodecError
from gateway.ground_truth import GroundTruth, reading_digest


@dataclass(slots=True)
class StreamContents:
    """Per (site, device): every seq and value found, duplicates included."""

    seqs: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    values: dict[tuple[str, str], list[np.ndarray]] = field(
        default_factory=lambda: defaultdict(list)
    )
    messages: int = 0
    undecodable: int = 0

    def add(self, batch: codec.Batch) -> None:
        for idx, (device, _metric, _unit) in enumerate(batch.series):
            mask = batch.series_index == idx
            key = (batch.site, device)
            self.seqs[key].append(batch.seq[mask])
            self.values[key].append(batch.value[mask])


async def read_telemetry(
    js: JetStreamContext, subject: str = "telemetry.>", fetch: int = 512
) -> StreamContents:
    """Read every message now in TELEMETRY (matching `subject`) with an ephemeral consumer."""
    info = await js.stream_info(subjects.TELEMETRY_STREAM)
    contents = StreamContents()
    if info.state.messages == 0:
        return contents
    sub = await js.pull_subscribe(
        subject,
        stream=subjects.TELEMETRY_STREAM,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0
        ),
    )
    try:
        last = info.state.last_seq
        while True:
            msgs = await sub.fetch(fetch, timeout=5.0)
            for msg in msgs:
                contents.messages += 1
                try:
                    contents.add(codec.decode(msg.data))
                except CodecError:
                    contents.undecodable += 1
            if msgs[-1].metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
    return contents


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


@dataclass(frozen=True, slots=True)
class Report:
    emitted: int
    stored: int
    missing: int
    duplicates: int
    unexpected: int
    altered: int
    devices: list[DeviceReport]

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.duplicates == 0 and self.altered == 0

    def summary(self) -> dict[str, int]:
        return {
            "emitted": self.emitted,
            "stored": self.stored,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "altered": self.altered,
        }


def compare(truth: GroundTruth, contents: StreamContents) -> Report:
    reports = []
    keys = set(truth.devices) | set(contents.seqs)
    for key in sorted(keys):
        reports.append(_compare_device(key, truth, contents))
    return Report(
        emitted=sum(r.emitted for r in reports),
        stored=sum(r.stored for r in reports),
        missing=sum(r.missing for r in reports),
        duplicates=sum(r.duplicates for r in reports),
        unexpected=sum(r.unexpected for r in reports),
        altered=sum(r.altered for r in reports),
        devices=reports,
    )


def _compare_device(
    key: tuple[str, str], truth: GroundTruth, contents: StreamContents
) -> DeviceReport:
    t = truth.devices.get(key)
    parts = contents.seqs.get(key, [])
    seqs = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    values = np.concatenate(contents.values[key]) if parts else np.empty(0, dtype=np.float64)
    uniq, first_idx = np.unique(seqs, return_index=True)
    duplicates = int(seqs.shape[0] - uniq.shape[0])
    if t is None or t.count == 0:
        return DeviceReport(
            key[0], key[1], 0, int(seqs.shape[0]), 0, duplicates, int(uniq.shape[0]), False
        )
    in_range = (uniq >= t.first_seq) & (uniq <= t.last_seq)
    found = int(in_range.sum())
    digest = reading_digest(uniq[in_range], values[first_idx][in_range])
    missing = t.count - found
    return DeviceReport(
        site=key[0],
        device=key[1],
        emitted=t.count,
        stored=int(seqs.shape[0]),
        missing=missing,
        duplicates=duplicates,
        unexpected=int((~in_range).sum()),
        altered=missing == 0 and digest != t.digest,
    )

"""Recognising broker redeliveries exactly: by MQTT packet identifier, never by guess.

What a broker does (MQTT 3.1.1 §4.4, §3.3.1.1, §2.3.1), and what we measured it does
(tests/edge/test_redelivery_brokers.py, Mosquitto 2 and nats-server's MQTT listener): a
QoS 1 PUBLISH that the client has not acknowledged is sent again with DUP=1 and the
same packet identifier: on session resume (both brokers) and, on nats-server, also after
its `ack_wait` on a live connection. A fresh PUBLISH always has DUP=0. Both brokers hand
out packet identifiers in sequence (1, 2, 3, ... 65535, 1, ...), skipping those in use,
and reuse one only after its PUBACK.

So, for each MQTT message it makes durable, the agent records, in the same SQLite
transaction as the batch (edge/buffer.py), its (source, packet id) with a digest of
topic and payload and the message's ordinal (how many messages of that source were
made durable before it). A later PUBLISH is a redelivery, to acknowledge and drop, when
and only when:

- it has DUP=1,
- a recorded (or not yet durable, in the open batch) message of the same source has its
  packet id and digest,
- and fewer than `HORIZON` messages of that source were recorded since that one.

Why that proves it: a PUBLISH with DUP=1 is a resend of the message that last had its
packet id. The record is of that message unless the broker has since given the id to
another message B (it then had our PUBACK of the first one). If B was made durable, its
record replaced the old one (the key is (source, packet id)); if not, B must not be taken
for the old one when it is resent. Giving the id out again takes a full turn of the
sequence (65,535 ids); every message before B except those still in flight (at most the
broker's in-flight window) had been acknowledged, so made durable, so recorded:
the old record is then more than 65,535 - window >= HORIZON messages old, and no longer
trusted. Safe while the broker's in-flight window is below 65,535 - HORIZON (32,767;
Mosquitto's default is 20, nats-server's `max_ack_pending` 1,024).

A broker that lost the session (CONNACK session present = 0) can resend nothing from
before: the source says so, and that source's records are forgotten at once, durably
(`forget`), before any message of the new session is handled.

Anything not proven is kept: a message without a packet id (QoS 0, serial), a DUP=1
message whose record was never made durable (the agent crashed first: the reading was
never stored), a device that sends the same reading twice. A reading may then reach the
cloud twice; the cloud consumer counts it once (its own job). Nothing here depends on
the readings' own sequence numbers, so devices without them, devices whose numbering
restarts at boot and packs of many readings are all exact.

Bounds: at most 65,535 records per source (the key), fewer after pruning by ordinal;
nothing per device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from edge.decoders.context import NO_SEQ

HORIZON = 32_768  # records older than this many messages of their source are not trusted
PRUNE_EVERY = 4096  # messages of a source between two prunings of its records


def digest(topic: str, payload: bytes) -> bytes:
    """8 bytes naming a message's content: a false match needs the same packet id too."""
    h = hashlib.blake2b(topic.encode(), digest_size=8)
    h.update(b"\0")
    h.update(payload)
    return h.digest()


@dataclass(frozen=True, slots=True)
class Record:
    digest: bytes
    ordinal: int


@dataclass(slots=True)
class PendingDeliveries:
    """What the open batch adds to the delivery records; made durable with it."""

    records: dict[tuple[str, int], Record] = field(default_factory=dict)
    ordinals: dict[str, int] = field(default_factory=dict)  # next ordinal, per source

    def __bool__(self) -> bool:
        return bool(self.records)

    def drop_source(self, source: str) -> None:
        """Its session is gone: what the open batch recorded of it can never come again."""
        for k in [k for k in self.records if k[0] == source]:
            del self.records[k]


class DeliveryLog:
    """The durable records (`records`, `ordinals`) are shared with the buffer, which loads
    them and applies each committed `PendingDeliveries`."""

    def __init__(self, records: dict[tuple[str, int], Record], ordinals: dict[str, int]) -> None:
        self.records = records
        self.ordinals = ordinals

    def redelivered(
        self,
        source: str,
        packet_id: int,
        dup: bool,
        content: bytes,
        pending: PendingDeliveries,
    ) -> bool:
        """True if this message is proven to be a resend of one already taken (durable, or
        in the open batch); otherwise record it in `pending` and return False."""
        if not packet_id:
            return False  # cannot be redelivered, so nothing to remember
        key = (source, packet_id)
        next_ordinal = pending.ordinals.get(source, self.ordinals.get(source, 0))
        if dup:
            rec = pending.records.get(key) or self.records.get(key)
            if rec is not None and rec.digest == content and next_ordinal - rec.ordinal <= HORIZON:
                return True
        pending.records[key] = Record(content, next_ordinal)
        pending.ordinals[source] = next_ordinal + 1
        return False

    def floors(self, committed: PendingDeliveries) -> dict[str, int]:
        """Sources whose records to prune with this commit, and the ordinal below which
        they go: once every `PRUNE_EVERY` messages, so a commit rarely pays for it."""
        return {
            source: ordinal - HORIZON
            for source, ordinal in committed.ordinals.items()
            if ordinal // PRUNE_EVERY != self.ordinals.get(source, 0) // PRUNE_EVERY
        }

    def apply(self, committed: PendingDeliveries, floors: dict[str, int]) -> None:
        """After the commit that made `committed` durable (and pruned by `floors`)."""
        self.records.update(committed.records)
        self.ordinals.update(committed.ordinals)
        for source, floor in floors.items():  # usually one: the ordinal test comes first
            stale = [k for k, r in self.records.items() if r.ordinal < floor and k[0] == source]
            for k in stale:
                del self.records[k]

    def forget(self, source: str) -> None:
        """The broker has no session for `source`: nothing of its records can come again."""
        for k in [k for k in self.records if k[0] == source]:
            del self.records[k]


class _Recent:
    """One series' last readings: a set to look up, a ring (a list and its head) to forget
    the oldest in O(1), and when it was last heard of. (Deleting a dict's first key again
    and again makes each next lookup scan the tombstones left at its front; a deque costs a
    528-byte block even for one reading, which a flood of device names pays 100,000 times.)"""

    __slots__ = ("head", "keys", "last", "order")

    def __init__(self, now: float) -> None:
        self.keys: set[tuple[int, int, float]] = set()
        self.order: list[tuple[int, int, float]] = []
        self.head = 0
        self.last = now

    def fresh(self, k: tuple[int, int, float], limit: int) -> bool:
        if k in self.keys:
            return False
        self.keys.add(k)
        order = self.order
        if len(order) < limit:
            order.append(k)
        else:  # full: the new one takes the oldest one's place
            head = self.head
            self.keys.discard(order[head])
            order[head] = k
            self.head = (head + 1) % len(order)
        return True


class ExactCopies:
    """Readings a device itself sent twice: the same series, seq, event time and value.

    Not a redelivery (the broker sees two messages) and not provable from the transport,
    but nothing is lost by dropping one: the copy carries no information the first did
    not, and the cloud counts a reading (series, event time, seq) once however often it
    arrives. Only numbered readings with their own event time qualify: a reading without
    a seq, or stamped by the agent on receipt, is never taken for a copy. Kept in memory
    (a copy across a restart is left to the cloud), the last `per_series` readings of a
    series, and forgotten for series silent for `silent_s`: bounded, nothing durable."""

    def __init__(self, per_series: int = 256, silent_s: float = 3600.0) -> None:
        self.per_series = per_series
        self.silent_s = silent_s
        self._seen: dict[str, _Recent] = {}
        self._next_prune = 0.0
        self.forgotten = 0  # series forgotten so far (the agent returns memory after some)

    def __len__(self) -> int:
        return sum(len(r.order) for r in self._seen.values())

    @property
    def series(self) -> int:
        return len(self._seen)

    def fresh(self, key: str, seq: int, time_ns: int, value: float, now: float) -> bool:
        """False if this exact reading was seen; otherwise remember it."""
        recent = self._seen.get(key)
        if recent is None:
            recent = self._seen[key] = _Recent(now)
        recent.last = now
        return recent.fresh((seq, time_ns, value), self.per_series)

    def fresh_many(
        self, key: str, seqs: list[int], times: list[int], values: list[float], now: float
    ) -> list[bool]:
        """`fresh` for each reading of one series in turn, in one call: a pack's column
        goes through here, so the series is looked up once, not per reading.
        Readings without a seq (NO_SEQ) are always fresh and never remembered."""
        recent = self._seen.get(key)
        if recent is None:
            recent = self._seen[key] = _Recent(now)
        recent.last = now
        fresh, limit = recent.fresh, self.per_series
        return [k[0] == NO_SEQ or fresh(k, limit) for k in zip(seqs, times, values, strict=True)]

    def prune(self, now: float) -> int:
        """Forget series silent longer than `silent_s` (checked at most every quarter of
        it, and at least once a minute); how many were forgotten. The dicts are rebuilt
        after a prune that emptied much of them: a dict never shrinks by deletion, so one
        grown by a flood of 100,000 names would keep its size for good."""
        if now < self._next_prune:
            return 0
        self._next_prune = now + min(60.0, self.silent_s / 4)
        gone = [k for k, r in self._seen.items() if now - r.last > self.silent_s]
        for key in gone:
            del self._seen[key]
        self.forgotten += len(gone)
        if gone and len(gone) >= len(self._seen):
            self._seen = dict(self._seen)
        return len(gone)

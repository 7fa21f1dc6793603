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

One more resend, measured on nats-server's MQTT listener (tests/edge/test_full_disk_agent.py,
where a full disk holds acknowledgements back for seconds): a message whose PUBACK reaches
the server around its `ack_wait` can be sent again after the PUBACK, with DUP=1 under a
*new* packet id (its JetStream redelivery was under way; the PUBACK had freed the old id,
so the next one in turn is given). So a DUP=1 message is also a copy when:

- its packet id is fresh on this connection: after the id of every first send (DUP=0)
  on it so far, in the broker's turn (nothing handed out before this connection can look
  like that),
- and a message with the same digest was taken earlier on this same connection (within
  `HORIZON`).

Why that cannot drop a message never stored: a DUP=1 message is a resend; if it were of
another message B with the same bytes whose first send we never received, B's send was
lost, which a TCP connection does not do, so it went out on an earlier connection and
got its packet id then: before every id of this connection, so not fresh.

A broker that lost the session (CONNACK session present = 0) can resend nothing from
before: the source says so, and that source's records are forgotten at once, durably
(`forget`), before any message of the new session is handled.

Anything not proven is kept: a message without a packet id (QoS 0, serial), a DUP=1
message whose record was never made durable (the agent crashed first: the reading was
never stored), a device that sends the same reading twice. A reading may then reach the
cloud twice; the cloud consumer counts it once (its own job). Nothing here depends on
the readings' own sequence numbers, so devices without them, devices whose numbering
restarts at boot and packs of many readings are all exact.

Bounds: at most 65,535 records per source (the key), fewer after pruning by ordinal,
held in two fixed arrays of 1 MiB a source (`_Table`); nothing per device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from edge.decoders.context import NO_SEQ

HORIZON = 32_768  # records older than this many messages of their source are not trusted
_PID_TURN = 65_536  # packet ids 1..65535 are handed out in turn (0 is not an id)
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


@dataclass(slots=True)
class _Link:
    """A source's current connection: what a resend under a fresh packet id is checked
    against (in memory: a new process is a new connection)."""

    connection: int
    first_ordinal: int  # the ordinal of its first message: later records are of it
    newest: int = 0  # the furthest packet id, in turn, of a first send (DUP=0) on it

    def fresh(self, packet_id: int) -> bool:
        """After the id of every first send on this connection, in the broker's turn. Only
        first sends count: their ids were handed out on this connection, while a resend
        (DUP=1) may carry an id from before it."""
        if not self.newest:
            return False  # nothing sent on this connection yet
        return 0 < (packet_id - self.newest) % _PID_TURN < _PID_TURN // 2

    def saw_first_send(self, packet_id: int) -> None:
        if not self.newest or self.fresh(packet_id):
            self.newest = packet_id


class _Table:
    """One source's records, indexed by packet id: two fixed arrays (1 MiB a source), so
    the records cost the same memory after a flood of messages as before it (a dict of
    records grew to about 9 MiB at the horizon and kept it: issue 12's device flood)."""

    __slots__ = ("digests", "ordinals")

    def __init__(self) -> None:
        self.digests = np.zeros(_PID_TURN, dtype=np.uint64)
        self.ordinals = np.full(_PID_TURN, -1, dtype=np.int64)  # -1: no record

    def get(self, packet_id: int) -> Record | None:
        ordinal = int(self.ordinals[packet_id])
        if ordinal < 0:
            return None
        return Record(int(self.digests[packet_id]).to_bytes(8, "little"), ordinal)

    def put(self, items: list[tuple[int, Record]]) -> None:
        pids = np.fromiter((pid for pid, _ in items), np.int64, len(items))
        self.digests[pids] = np.fromiter(
            (int.from_bytes(r.digest, "little") for _, r in items), np.uint64, len(items)
        )
        self.ordinals[pids] = np.fromiter((r.ordinal for _, r in items), np.int64, len(items))

    def prune(self, floor: int) -> None:
        self.ordinals[self.ordinals < floor] = -1

    def has_digest(self, content: bytes, floor: int) -> bool:
        hit = self.digests == np.uint64(int.from_bytes(content, "little"))
        return bool((hit & (self.ordinals >= floor)).any())

    def pids(self) -> Iterator[int]:
        return (int(p) for p in np.flatnonzero(self.ordinals >= 0))


class _Records(Mapping[tuple[str, int], Record]):
    """The durable records as a read-only mapping (source, packet id) -> Record."""

    def __init__(self, tables: dict[str, _Table]) -> None:
        self._tables = tables

    def __getitem__(self, key: tuple[str, int]) -> Record:
        table = self._tables.get(key[0])
        rec = table.get(key[1]) if table is not None and 0 < key[1] < _PID_TURN else None
        if rec is None:
            raise KeyError(key)
        return rec

    def __iter__(self) -> Iterator[tuple[str, int]]:
        for source, table in self._tables.items():
            for pid in table.pids():
                yield source, pid

    def __len__(self) -> int:
        return sum(int((t.ordinals >= 0).sum()) for t in self._tables.values())


class DeliveryLog:
    """The durable records are loaded by the buffer (`load`), which applies each
    committed `PendingDeliveries` (`apply`)."""

    def __init__(
        self,
        records: Mapping[tuple[str, int], Record] | None = None,
        ordinals: dict[str, int] | None = None,
    ) -> None:
        self._tables: dict[str, _Table] = {}
        self.records: Mapping[tuple[str, int], Record] = _Records(self._tables)
        self.ordinals: dict[str, int] = {} if ordinals is None else ordinals
        self._links: dict[str, _Link] = {}
        self.fresh_id_copies = 0  # copies recognised under a new packet id (nats-server)
        if records:
            self.load(records.items())

    def load(self, records: Iterable[tuple[tuple[str, int], Record]]) -> None:
        """Add records (later ones for the same key win), as read from the buffer file."""
        by_source: dict[str, list[tuple[int, Record]]] = {}
        for (source, pid), rec in records:
            by_source.setdefault(source, []).append((pid, rec))
        for source, items in by_source.items():
            self._table(source).put(items)

    def clear(self) -> None:
        self._tables.clear()
        self.ordinals.clear()

    def _table(self, source: str) -> _Table:
        table = self._tables.get(source)
        if table is None:
            table = self._tables[source] = _Table()
        return table

    def _record(self, source: str, packet_id: int) -> Record | None:
        table = self._tables.get(source)
        return table.get(packet_id) if table is not None else None

    def redelivered(
        self,
        source: str,
        packet_id: int,
        dup: bool,
        content: bytes,
        pending: PendingDeliveries,
        connection: int = 0,
    ) -> bool:
        """True if this message is proven to be a resend of one already taken (durable, or
        in the open batch); otherwise record it in `pending` and return False.
        `connection` numbers the source's connections (a new one after each CONNACK)."""
        if not packet_id:
            return False  # cannot be redelivered, so nothing to remember
        key = (source, packet_id)
        next_ordinal = pending.ordinals.get(source, self.ordinals.get(source, 0))
        link = self._links.get(source)
        if link is None or link.connection != connection:
            link = self._links[source] = _Link(connection, next_ordinal)
        if dup:
            rec = pending.records.get(key) or self._record(source, packet_id)
            if rec is not None and rec.digest == content and next_ordinal - rec.ordinal <= HORIZON:
                return True
            if link.fresh(packet_id) and self._taken_on(
                link, source, content, next_ordinal, pending
            ):
                self.fresh_id_copies += 1
                return True
        else:
            link.saw_first_send(packet_id)
        pending.records[key] = Record(content, next_ordinal)
        pending.ordinals[source] = next_ordinal + 1
        return False

    def _taken_on(
        self,
        link: _Link,
        source: str,
        content: bytes,
        next_ordinal: int,
        pending: PendingDeliveries,
    ) -> bool:
        """A message with this digest was taken on `link`'s connection, within the horizon.
        A scan, not an index: such resends are rare (a few per acknowledgement held back
        for about `ack_wait`), and an index would cost memory per message, always."""
        floor = max(link.first_ordinal, next_ordinal - HORIZON)
        for (src, _pid), rec in pending.records.items():
            if rec.digest == content and src == source and rec.ordinal >= floor:
                return True
        table = self._tables.get(source)
        return table is not None and table.has_digest(content, floor)

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
        self.load(committed.records.items())
        self.ordinals.update(committed.ordinals)
        for source, floor in floors.items():
            table = self._tables.get(source)
            if table is not None:
                table.prune(floor)

    def forget(self, source: str) -> None:
        """The broker has no session for `source`: nothing of its records can come again."""
        self._tables.pop(source, None)


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

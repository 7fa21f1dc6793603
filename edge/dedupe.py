"""Recognising redelivered readings when deliveries can arrive out of order.

A bare per-device high-water mark (drop every seq <= the highest seen) loses readings as
soon as a broker delivers out of order, and brokers do: after the agent crashes with
QoS 1 messages unacknowledged, nats-server's MQTT listener sends the newer messages at
once and redelivers the unacknowledged ones only after its `ack_wait` (30 s), so their
seqs are below the high-water mark by then. Measured in tests/chaos: 20 kills lost
hundreds of readings that way.

So each key keeps, besides its high-water mark, the seqs it skipped ("holes"). A seq
above the mark is new (the seqs jumped over become holes); a seq in the holes is a late
delivery and is accepted (its hole closes); anything else was seen and is dropped. Holes
are bounded: a jump of more than `MAX_GAP` seqs is taken as the device skipping (reboot,
its own loss) rather than waited for, and holes further than `WINDOW` below the mark are
forgotten. Both are made durable with the batch, in the same transaction (edge/buffer.py).
"""

from __future__ import annotations

MAX_GAP = 256  # seqs skipped in one jump that are still waited for
WINDOW = 10_000  # how far below the high-water mark a late delivery is still accepted


class SeqFilter:
    """Durable state (`high_water`, `holes`) is shared with the buffer, which updates it
    after each commit; a batch in progress keeps its changes in `pending_*` dicts."""

    def __init__(self, high_water: dict[str, int], holes: dict[str, set[int]]) -> None:
        self.high_water = high_water
        self.holes = holes

    def accept(
        self, key: str, seq: int, pending_hw: dict[str, int], pending_holes: dict[str, set[int]]
    ) -> bool:
        """True if `seq` is new for `key` (and record it in the pending state)."""
        hw = pending_hw.get(key)
        if hw is None:
            hw = self.high_water.get(key, -1)  # unseen key: seqs 1..seq-1 may still come
        if seq > hw:
            gap = seq - hw - 1
            if 0 < gap <= MAX_GAP:
                self._pending(key, pending_holes).update(range(max(hw + 1, 1), seq))
            holes = pending_holes.get(key) or self.holes.get(key)
            if holes and min(holes) < seq - WINDOW:
                self._pending(key, pending_holes).difference_update(
                    [h for h in holes if h < seq - WINDOW]
                )
            pending_hw[key] = seq
            return True
        holes = pending_holes.get(key, self.holes.get(key))
        if holes and seq in holes:
            self._pending(key, pending_holes).discard(seq)
            return True
        return False

    def _pending(self, key: str, pending_holes: dict[str, set[int]]) -> set[int]:
        holes = pending_holes.get(key)
        if holes is None:
            holes = pending_holes[key] = set(self.holes.get(key, ()))
        return holes

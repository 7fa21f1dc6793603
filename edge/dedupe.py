"""Recognising redelivered readings when deliveries can arrive out of order.

A bare high-water mark per series (drop every seq <= the highest seen) loses readings as
soon as a broker delivers out of order, and brokers do: after the agent crashes with
QoS 1 messages unacknowledged, nats-server's MQTT listener sends the newer messages at
once and redelivers the unacknowledged ones only after its `ack_wait` (30 s), so their
seqs are below the high-water mark by then. Measured in tests/chaos: 20 kills lost
hundreds of readings that way.

So each key (a series) keeps, besides its high-water mark, the seqs that an unusual jump
skipped ("holes"). A seq above the mark is new; a seq in the holes is a late delivery and
is accepted (its hole closes); anything else was seen and is dropped.

A jump is unusual when it is longer than the key's stride, the smallest step seen so far
(a device that numbers its readings across metrics steps by the number of metrics in each
series); only the seqs on that stride become holes, so the regular gaps of such a device
cost nothing. Holes are bounded: a jump of more than `MAX_GAP` strides (seqs while the
stride is not known yet, as after a restart) is taken as the device skipping (reboot, its
own loss) rather than waited for, and holes further than `WINDOW` below the mark are
forgotten. Mark and holes are made durable with the batch, in the same transaction
(edge/buffer.py); strides are learnt again after a restart.

Known gap: the stride is a guess from the steps seen since the start, and late deliveries
can fake it. After a restart the first step of a series is often the jump over what was
in flight; if its next step is a jump too, before one of its own stride, the guess is too
coarse and that jump leaves no holes. A crash loop does it: killed before each commit,
the agent is sent the unacknowledged messages after newer ones every time, until a
series of stride 1 comes as 3, 1, 5, 7, 4, 6. Up to 7 that is what a series of stride 2
looks like, so 7 leaves no hole and 6 is dropped; no rule that keeps a strided device's
own gaps out of the holes can do otherwise (tests/edge/test_dedupe_properties.py).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

MAX_GAP = 256  # the longest jump (in strides) whose skipped seqs are still waited for
WINDOW = 10_000  # how far below the high-water mark a late delivery is still accepted


class SeqFilter:
    """Durable state (`high_water`, `holes`) is shared with the buffer, which updates it
    after each commit; a batch in progress keeps its changes in `pending_*` dicts."""

    def __init__(self, high_water: dict[str, int], holes: dict[str, set[int]]) -> None:
        self.high_water = high_water
        self.holes = holes
        self._stride: dict[str, int] = {}

    def mark(self, key: str, pending_hw: dict[str, int]) -> int:
        hw = pending_hw.get(key)
        return self.high_water.get(key, -1) if hw is None else hw

    def accept(
        self, key: str, seq: int, pending_hw: dict[str, int], pending_holes: dict[str, set[int]]
    ) -> bool:
        """True if `seq` is new for `key` (and record it in the pending state)."""
        hw = self.mark(key, pending_hw)
        if seq > hw:
            self._advance(key, hw, seq, pending_holes)
            pending_hw[key] = seq
            return True
        holes = pending_holes.get(key, self.holes.get(key))
        if holes and seq in holes:
            self._pending(key, pending_holes).discard(seq)
            return True
        return False

    def accept_run(
        self,
        key: str,
        seqs: npt.NDArray[np.int64],
        pending_hw: dict[str, int],
        pending_holes: dict[str, set[int]],
    ) -> npt.NDArray[np.bool_]:
        """`accept` for a column of seqs, vectorised when nothing unusual is in it."""
        hw = self.mark(key, pending_hw)
        stride = self._stride.get(key)
        if stride is not None and seqs.size and not self._has_holes(key, pending_holes):
            steps = np.diff(seqs, prepend=hw)
            if bool((steps == stride).all()):  # the usual case: each seq one stride on
                pending_hw[key] = int(seqs[-1])
                return np.ones(seqs.shape, dtype=np.bool_)
        return np.fromiter(
            (self.accept(key, int(s), pending_hw, pending_holes) for s in seqs),
            dtype=np.bool_,
            count=seqs.size,
        )

    def _advance(self, key: str, hw: int, seq: int, pending_holes: dict[str, set[int]]) -> None:
        step = seq - hw
        stride = self._stride.get(key)
        if hw >= 0:  # a step from a known mark teaches the stride
            self._stride[key] = step if stride is None else min(stride, step)
        lattice = stride or 1
        # An unseen key's seqs start at 1, so its jump counts from 0 (not from its mark -1,
        # which made a first seq of MAX_GAP a jump too long to wait for).
        jump = seq - max(hw, 0)
        if jump > lattice and jump // lattice <= MAX_GAP:  # unusual: skipped seqs may come
            self._pending(key, pending_holes).update(range(max(hw + lattice, 1), seq, lattice))
        holes = pending_holes.get(key) or self.holes.get(key)
        if holes and min(holes) < seq - WINDOW:
            self._pending(key, pending_holes).difference_update(
                [h for h in holes if h < seq - WINDOW]
            )

    def _has_holes(self, key: str, pending_holes: dict[str, set[int]]) -> bool:
        holes = pending_holes[key] if key in pending_holes else self.holes.get(key)
        return bool(holes)

    def _pending(self, key: str, pending_holes: dict[str, set[int]]) -> set[int]:
        holes = pending_holes.get(key)
        if holes is None:
            holes = pending_holes[key] = set(self.holes.get(key, ()))
        return holes

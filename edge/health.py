"""Whether the agent is doing its job right now, and why not: what `/healthz` says.

Not ready while a source is down (its task ended, or it cannot connect or subscribe) or
while the uplink is stalled: the buffer has held batches for `stall_after_s` and none was
published meanwhile. A cloud that is merely unreachable is not a fault by itself (the agent
buffers; that is its job) until it stalls a backlog.

Every change of a part's state is logged once, with its reason (a source up or down, the
uplink connected, disconnected or stalled); nothing is logged while a state holds, so an
outage of any length costs a line or two of log, not one per retry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from edge.sources import SourceStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UplinkStatus:
    connected: bool
    detail: str  # why not connected: the last connect error ("": a first connect under way)
    buffered_batches: int
    last_progress: float  # monotonic time of the last batch published (or the uplink's start)


@dataclass(frozen=True, slots=True)
class Health:
    ready: bool
    problems: list[str] = field(default_factory=list)  # one sentence per part that is not ok


@dataclass(slots=True)
class _Part:
    state: str
    detail: str


class HealthMonitor:
    """`assess` computes the health and logs each part whose state changed since the last
    call, so a healthy start logs nothing here."""

    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self._parts: dict[str, _Part] = {}
        self._backlog_since: float | None = None

    def assess(
        self, started: bool, sources: Mapping[str, SourceStatus], uplink: UplinkStatus, now: float
    ) -> Health:
        problems = [self._source(name, st) for name, st in sources.items()]
        problems.append(self._uplink(uplink, now))
        found = [p for p in problems if p]
        if not started:
            found.insert(0, "starting: not every source has subscribed yet")
        return Health(not found, found)

    def _source(self, name: str, st: SourceStatus) -> str:
        state = "up" if st.up else "dead" if st.dead else "down" if st.detail else "connecting"
        self._change(f"source {name}", state, st.detail)
        return "" if st.up else f"source {name} is {state}: {st.detail}"

    def _uplink(self, up: UplinkStatus, now: float) -> str:
        if up.buffered_batches == 0:
            self._backlog_since = None
        elif self._backlog_since is None:
            self._backlog_since = now
        since = max(up.last_progress, self._backlog_since or now)
        stalled = up.buffered_batches > 0 and now - since >= self.stall_after_s
        if stalled:
            why = up.detail if not up.connected else "no PubAck"
            detail = (
                f"{up.buffered_batches} batches buffered and none published for"
                f" {now - since:.0f}s ({why})"
            )
            self._change("uplink", "stalled", detail)
            return f"uplink is stalled: {detail}"
        state = "connected" if up.connected else "disconnected" if up.detail else "connecting"
        self._change("uplink", state, up.detail)
        return ""

    def _change(self, part: str, state: str, detail: str) -> None:
        old = self._parts.get(part)
        self._parts[part] = _Part(state, detail)
        was_fine = old is None or old.state in _FINE
        if (old is not None and old.state == state) or (was_fine and state in _FINE):
            return
        if state in _FINE:
            log.info("%s is %s again", part, state)
        else:
            log.warning("%s is %s: %s", part, state, detail)


# States that are not worth a line by themselves (a first connection under way is not news)
_FINE = ("up", "connected", "connecting")

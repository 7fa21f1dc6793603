"""The headers a dead letter carries on top of the envelope (`gateway/envelope.py`).

Written by the edge agent (what a source received and could not accept) and by the
aggregator (readings it would not aggregate); read by `gateway verify`. The names are
documented in docs/wire-format.md and docs/api.md:

  Gateway-Dead-Letter-Reason  a short code: `invalid_json`, `late_10s`, `not_a_batch`, ...
  Gateway-Dead-Letter-Source  the edge source (`mqtt1`) or the TELEMETRY subject
  Gateway-Dead-Letter-Detail  a human-readable line
  Gateway-Source-Seq          the TELEMETRY stream sequence (aggregator only)
  Gateway-Original-Size       set when the payload was cut to fit the server's max_payload:
                              the original length in bytes (edge only)
  Gateway-Original-Sha256     then also: the SHA-256 (hex) of the original payload
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

REASON = "Gateway-Dead-Letter-Reason"
SOURCE = "Gateway-Dead-Letter-Source"
DETAIL = "Gateway-Dead-Letter-Detail"
SOURCE_SEQ = "Gateway-Source-Seq"
ORIGINAL_SIZE = "Gateway-Original-Size"
ORIGINAL_DIGEST = "Gateway-Original-Sha256"
UNKNOWN_REASON = "unknown"  # what a reader makes of a dead letter without a reason


@dataclass(frozen=True, slots=True)
class DeadLetterHeaders:
    """Why a message is a dead letter and where it came from."""

    reason: str
    source: str = ""
    detail: str = ""
    source_seq: int | None = None

    def to_headers(self) -> dict[str, str]:
        """The NATS headers; `Gateway-Source-Seq` only when there is a sequence."""
        out = {REASON: self.reason, SOURCE: self.source, DETAIL: self.detail}
        if self.source_seq is not None:
            out[SOURCE_SEQ] = str(self.source_seq)
        return out

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> DeadLetterHeaders:
        """Read them back, leniently: other headers (the envelope's) are ignored, a missing
        reason is `unknown`, a missing or unreadable sequence is None."""
        h = headers or {}
        seq = h.get(SOURCE_SEQ, "")
        return cls(
            reason=h.get(REASON, UNKNOWN_REASON),
            source=h.get(SOURCE, ""),
            detail=h.get(DETAIL, ""),
            source_seq=int(seq) if seq.isdigit() else None,
        )

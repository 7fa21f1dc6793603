"""Payload decoders: bytes from a source -> readings, or a `DecodeError` with a reason.

Every decoder is a pure function `(payload, topic) -> list[Reading]`.
"""

from __future__ import annotations

from collections.abc import Callable

from edge.decoders.json_readings import decode_json
from gateway.reading import Reading

Decoder = Callable[[bytes, str], list[Reading]]

DECODERS: dict[str, Decoder] = {"json": decode_json}

__all__ = ["DECODERS", "Decoder", "decode_json"]

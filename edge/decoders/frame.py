"""Compact serial frames with an NMEA-style checksum -> one reading.

    $GWR,<device>,<seq>,<time_ms>,<metric>,<value>[,<unit>]*hh

`hh` is the XOR of every byte between `$` and `*`, as two hex digits (NMEA 0183).
`time_ms` is milliseconds since the Unix epoch, or empty for the receive time; `unit`
is optional (the catalog's unit is used). A trailing CR/LF is ignored.
"""

from __future__ import annotations

import re

from edge.decoders.context import Context, make_reading
from edge.errors import DecodeError
from gateway.reading import Reading

SENTENCE = "GWR"
MAX_FRAME = 256
_DIGITS = re.compile(r"\d{1,19}")


def checksum(body: bytes) -> int:
    """NMEA 0183 checksum: XOR of the bytes between `$` and `*`."""
    x = 0
    for b in body:
        x ^= b
    return x


def split_frame(frame: bytes) -> bytes:
    """Check framing and checksum; return the body between `$` and `*`."""
    frame = frame.rstrip(b"\r\n")
    if len(frame) > MAX_FRAME:
        raise DecodeError("frame_too_long", f"{len(frame)} bytes")
    if not frame.startswith(b"$"):
        raise DecodeError("invalid_frame", "does not start with '$'")
    star = frame.rfind(b"*")
    if star < 0 or len(frame) - star != 3:
        raise DecodeError("missing_checksum", "no '*hh' at the end")
    body, given = frame[1:star], frame[star + 1 :]
    try:
        expected = int(given, 16)
    except ValueError:
        raise DecodeError("missing_checksum", f"not hex: {given!r}") from None
    actual = checksum(body)
    if actual != expected:
        raise DecodeError("bad_checksum", f"frame says {expected:02X}, bytes give {actual:02X}")
    return body


def encode_frame(
    device: str, seq: int, time_ms: int | None, metric: str, value: float, unit: str = ""
) -> bytes:
    """The frame a device sends (used by simulators and tests)."""
    fields = [SENTENCE, device, str(seq), "" if time_ms is None else str(time_ms), metric]
    fields.append(repr(float(value)))
    if unit:
        fields.append(unit)
    body = ",".join(fields).encode()
    return b"$%s*%02X\r\n" % (body, checksum(body))


def decode_frame(payload: bytes, ctx: Context) -> list[Reading]:
    body = split_frame(payload)
    try:
        parts = body.decode("ascii").split(",")
    except UnicodeDecodeError:
        raise DecodeError("invalid_frame", "not ASCII") from None
    if parts[0] != SENTENCE:
        raise DecodeError("unknown_sentence", parts[0][:16])
    if len(parts) not in (6, 7):
        raise DecodeError("invalid_frame", f"{len(parts)} fields, expected 6 or 7")
    _, device, seq, time_ms, metric, value = parts[:6]
    unit = parts[6] if len(parts) == 7 else ""
    if not _DIGITS.fullmatch(seq):
        raise DecodeError("invalid_seq", repr(seq))
    if time_ms and not _DIGITS.fullmatch(time_ms):
        raise DecodeError("invalid_time", repr(time_ms))
    time_ns = int(time_ms) * 1_000_000 if time_ms else ctx.received_ns
    try:
        v = float(value)
    except ValueError:
        raise DecodeError("wrong_type", f"value={value!r}") from None
    return [make_reading(ctx.site, device, metric, v, unit, time_ns, int(seq))]

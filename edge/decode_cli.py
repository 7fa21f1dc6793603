"""`gateway decode`: decode payloads the way the agent would, for operators checking what a
device sends. Each reading is printed as one JSON line; each refusal as one JSON line with
`"dead_letter": true` and its reason. Exit status 1 if anything was refused."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from devices.catalog import load_catalog
from edge.decoders import DECODERS, Context
from edge.errors import DecodeError
from edge.validation import Validator
from gateway.config import ValidationSettings


def register(sub: Any) -> None:
    p = sub.add_parser("decode", help="decode device payloads as the agent would")
    p.add_argument("--format", choices=sorted(DECODERS), required=True)
    p.add_argument("file", nargs="?", default="-", help="payloads, one per line (default stdin)")
    p.add_argument("--site", default="site1", help="site for formats that carry none")
    p.add_argument("--topic", default="", help="MQTT topic (its last level is the device)")
    p.add_argument("--device", default=None, help="device for payloads that name none")
    p.add_argument("--catalog", type=Path, default=None, help="device catalog for validation")
    p.set_defaults(func=_decode)


def payloads(data: bytes, fmt: str) -> Iterator[bytes]:
    """One JSON document (possibly pretty-printed over many lines), else one per line."""
    if fmt in ("json", "senml"):
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            yield data
            return
    for line in data.splitlines():
        if line.strip():
            yield line


def decode_lines(data: bytes, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    decoder = DECODERS[args.format]
    validator = Validator(load_catalog(args.catalog), ValidationSettings())
    for raw in payloads(data, args.format):
        now = time.time_ns()
        if args.topic:
            ctx = Context.for_topic(args.site, args.topic, now)
        else:
            ctx = Context(args.site, now, args.topic, args.device)
        try:
            readings = decoder(raw, ctx)
        except DecodeError as exc:
            yield _letter(exc, raw)
            continue
        for r in readings:
            try:
                checked = validator.check(r, now)
            except DecodeError as exc:
                yield _letter(exc, raw)
                continue
            c = checked.reading
            out = {"site": c.site, "device": c.device, "metric": c.metric, "value": c.value}
            out |= {"unit": c.unit, "time": c.time_ns, "seq": c.seq, "flags": c.flags}
            if checked.original_time_ns is not None:
                out["original_time"] = checked.original_time_ns
            yield out


def _letter(exc: DecodeError, raw: bytes) -> dict[str, Any]:
    return {
        "dead_letter": True,
        "reason": exc.reason,
        "detail": exc.detail,
        "payload": raw.decode("utf-8", errors="backslashreplace"),
    }


def _decode(args: argparse.Namespace) -> int:
    source: BinaryIO
    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(args.file, "rb") as source:
            data = source.read()
    refused = 0
    out = sys.stdout.buffer
    for item in decode_lines(data, args):
        refused += "dead_letter" in item
        out.write(orjson.dumps(item) + b"\n")
    out.flush()
    return 1 if refused else 0

"""`gateway decode`: decode payloads the way the agent would, for operators checking what a
device sends. Each reading is printed as one JSON line; each refusal as one JSON line with
`"dead_letter": true` and its reason. Exit status 1 if anything was refused.

`gateway decode --config agent.toml --topic TOPIC [FILE]` takes the whole file as one
message arriving on TOPIC: the source whose topics match it decodes it with its format and
mapping, and the config's validation checks each reading, exactly as in that agent.
`gateway decode --format F [FILE]` decodes one payload per line (or one JSON document)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from devices.catalog import load_catalog
from edge.decoders import DECODERS, Context, Decoder, build_decoder
from edge.errors import DecodeError
from edge.validation import Validator
from gateway import config
from gateway.config import AgentConfig, MqttSourceSettings, ValidationSettings
from gateway.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser("decode", help="decode device payloads as the agent would")
    p.add_argument("--format", choices=sorted(DECODERS), default=None)
    p.add_argument("--config", type=Path, default=None, help="an agent config (its sources)")
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


def subscribed(sub: str, topic: str) -> bool:
    """Whether MQTT subscription `sub` (with `+` and `#`) matches `topic`."""
    s, t = sub.split("/"), topic.split("/")
    for i, level in enumerate(s):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(s) == len(t)


def source_for(cfg: AgentConfig, topic: str) -> tuple[Decoder, str]:
    """The decoder of the first MQTT source subscribed to `topic`, and the source's name."""
    for i, s in enumerate(cfg.sources):
        if isinstance(s, MqttSourceSettings) and any(subscribed(t, topic) for t in s.topics):
            return build_decoder(f"sources.{i}.mapping", s.format, s.mapping), f"mqtt{i}"
    raise ConfigError(f"no source of the config subscribes to {topic!r}")


def decode_with_config(data: bytes, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    cfg = config.load(AgentConfig, args.config)
    decoder, _name = source_for(cfg, args.topic)
    validator = Validator(load_catalog(args.catalog or cfg.catalog), cfg.validation)
    now = time.time_ns()
    yield from _decode_one(decoder, validator, data, Context.for_topic(cfg.site, args.topic, now))


def decode_lines(data: bytes, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    decoder = DECODERS[args.format]
    validator = Validator(load_catalog(args.catalog), ValidationSettings())
    for raw in payloads(data, args.format):
        now = time.time_ns()
        if args.topic:
            ctx = Context.for_topic(args.site, args.topic, now)
        else:
            ctx = Context(args.site, now, args.topic, args.device)
        yield from _decode_one(decoder, validator, raw, ctx)


def _decode_one(
    decoder: Decoder, validator: Validator, raw: bytes, ctx: Context
) -> Iterator[dict[str, Any]]:
    now = ctx.received_ns
    try:
        readings = decoder(raw, ctx)
    except DecodeError as exc:
        yield _letter(exc, raw)
        return
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
    if (args.config is None) == (args.format is None):
        print("gateway decode: give either --config (with --topic) or --format", file=sys.stderr)
        return 2
    if args.config is not None and not args.topic:
        print("gateway decode: --config needs --topic", file=sys.stderr)
        return 2
    try:
        items = list(decode_with_config(data, args) if args.config else decode_lines(data, args))
    except ConfigError as exc:
        print(f"gateway decode: {exc}", file=sys.stderr)
        return 2
    refused = 0
    out = sys.stdout.buffer
    for item in items:
        refused += "dead_letter" in item
        out.write(orjson.dumps(item) + b"\n")
    out.flush()
    return 1 if refused else 0

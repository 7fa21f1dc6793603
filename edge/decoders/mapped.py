"""Payloads that are not our own schema, read through a source's `[mapping]`.

- `MappedJson` (format `mapped`): any JSON object; each numeric leaf (and each boolean or
  `ON`/`OFF`) under `readings` is one reading. `{"Time": .., "AM2301": {"Temperature":
  24.6}}` gives metric `am2301_temperature` (template `{path}`, rule `snake`) or
  `temperature` (template `{key}`); strings and arrays are metadata and are skipped.
- `MappedLine` (format `line` with a mapping): line protocol whose tags may name site,
  device and metric (`{host}`, `{sensor}`), so that Telegraf's tags are kept, not dropped.
- `TopicDefaults` (the other formats with a mapping): the topic pattern gives the site and
  the default device, which the payload may still override.

A topic matching `ignore_topics`, or a message where `when` is false, gives no readings
and no dead letter: it is not a device's reading (Zigbee2MQTT's `bridge/` topics).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from edge.decoders.context import MAX_READINGS_PER_MESSAGE, NO_SEQ, Context, make_reading
from edge.decoders.line_protocol import parse_line
from edge.decoders.mapping import CompiledMapping, MappedDecoder, on_off
from edge.errors import DecodeError
from gateway.reading import Reading

_MAX_DEPTH = 16
Decoder = Any  # Callable[[bytes, Context], list[Reading]]; kept loose to avoid a cycle


def _leaves(
    obj: dict[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], float]]:
    """(key path, value) of every numeric, boolean or ON/OFF leaf, in document order."""
    if len(prefix) >= _MAX_DEPTH:
        raise DecodeError("too_deep", f"over {_MAX_DEPTH} levels at {'.'.join(prefix)!r}")
    for key, v in obj.items():
        if isinstance(v, dict):
            yield from _leaves(v, (*prefix, key))
        elif isinstance(v, bool):
            yield (*prefix, key), 1.0 if v else 0.0
        elif isinstance(v, int | float):
            yield (*prefix, key), float(v)
        elif isinstance(v, str):
            flag = on_off(v)
            if flag is not None:
                yield (*prefix, key), flag


class MappedJson(MappedDecoder):
    def __call__(self, payload: bytes, ctx: Context) -> list[Reading]:
        m = self.m
        parts = self.topic_parts(ctx)
        if parts is None:
            return []
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("invalid_json", str(exc)) from None
        if not m.wanted_message(doc):
            return []
        values = m.values(doc, parts)
        site, device = m.identity(ctx, values)
        time_ns = m.event_time(doc, ctx)
        seq = m.sequence(doc, NO_SEQ)
        root = m.readings(doc)
        if not isinstance(root, dict):
            where = m.settings.readings
            raise DecodeError(
                "no_readings", f"{where!r} gives {type(root).__name__}, not an object"
            )
        out: list[Reading] = []
        for keys, value in _leaves(root):
            leaf = {**values, "path": "_".join(keys), "key": keys[-1]}
            if len(keys) > 1:
                leaf["parent"], leaf["top"] = keys[-2], keys[0]
            rule = m.rule(".".join(keys), leaf)
            if rule is None:
                continue
            if m.device_per_leaf:
                device = m.identity(ctx, leaf)[1]
            unit = m.unit(rule, doc)
            out.append(
                make_reading(site, device, rule.name, value * rule.scale, unit, time_ns, seq)
            )
            if len(out) > MAX_READINGS_PER_MESSAGE:
                raise DecodeError("too_many_readings", f"over {MAX_READINGS_PER_MESSAGE}")
        if not out:
            raise DecodeError("no_readings", f"no numeric value under {m.settings.readings!r}")
        return out


class MappedLine(MappedDecoder):
    def __call__(self, payload: bytes, ctx: Context) -> list[Reading]:
        m = self.m
        parts = self.topic_parts(ctx)
        if parts is None:
            return []
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid_utf8", str(exc)) from None
        out: list[Reading] = []
        for line in text.splitlines():
            point = parse_line(line)
            if point is None:
                continue
            values = {**parts, **point.tags, "measurement": point.measurement}
            site, device = m.identity(ctx, values)
            time_ns = ctx.received_ns if point.time_ns is None else point.time_ns
            for key, v in point.fields.items():
                if isinstance(v, str):
                    continue
                path = point.measurement if key == "value" else f"{point.measurement}_{key}"
                leaf = {**values, "path": path, "key": key, "parent": point.measurement}
                rule = m.rule(f"{point.measurement}.{key}", leaf)
                if rule is None:
                    continue
                unit = point.tags.get("unit") or m.unit(rule, None)
                out.append(
                    make_reading(
                        site, device, rule.name, float(v) * rule.scale, unit, time_ns, NO_SEQ
                    )
                )
            if len(out) > MAX_READINGS_PER_MESSAGE:
                raise DecodeError("too_many_readings", f"over {MAX_READINGS_PER_MESSAGE}")
        if not out:
            raise DecodeError("no_readings", "no line with a numeric field")
        return out


class TopicDefaults(MappedDecoder):
    """Another format's decoder, given the site and device the topic pattern names."""

    def __init__(self, mapping: CompiledMapping, decoder: Decoder) -> None:
        super().__init__(mapping)
        self.decoder = decoder

    def __call__(self, payload: bytes, ctx: Context) -> list[Reading]:
        values = self.topic_parts(ctx)
        if values is None:
            return []
        site, device = self.m.identity(ctx, values)
        readings: list[Reading] = self.decoder(
            payload, Context(site, ctx.received_ns, ctx.topic, device)
        )
        return readings

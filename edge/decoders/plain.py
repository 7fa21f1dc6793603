"""Plain values (format `value`): the payload is one number, `true`/`false` or `ON`/`OFF`,
as Shelly Gen1 (`shellies/<id>/relay/0/power` -> `101.123`) and ESPHome
(`<node>/sensor/<name>/state` -> `23.5`) publish. Site, device and metric come from the
topic pattern through the mapping's templates; the unit from `[mapping.metrics.<name>]`
or `mapping.unit`; the time is the receive time (such payloads carry none)."""

from __future__ import annotations

from edge.decoders.context import NO_SEQ, Context, make_reading
from edge.decoders.mapping import MappedDecoder, on_off
from edge.errors import DecodeError
from gateway.reading import Reading

MAX_VALUE_BYTES = 64


def parse_value(payload: bytes) -> float:
    if len(payload) > MAX_VALUE_BYTES:
        raise DecodeError("not_a_value", f"{len(payload)} bytes; a plain value is short")
    try:
        text = payload.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DecodeError("not_a_value", "not ASCII") from None
    flag = on_off(text)
    if flag is not None:
        return flag
    try:
        return float(text)
    except ValueError:
        raise DecodeError("not_a_value", repr(text[:32])) from None


class PlainValue(MappedDecoder):
    def __call__(self, payload: bytes, ctx: Context) -> list[Reading]:
        m = self.m
        values = self.topic_parts(ctx)
        if values is None:
            return []
        site, device = m.identity(ctx, values)
        value = parse_value(payload)
        leaf = {**values, "path": values.get("metric", ""), "key": values.get("metric", "")}
        rule = m.rule(ctx.topic, leaf)
        if rule is None:
            return []
        unit = m.unit(rule, None)
        return [
            make_reading(site, device, rule.name, value * rule.scale, unit, ctx.received_ns, NO_SEQ)
        ]

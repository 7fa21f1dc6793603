"""A source's `[mapping]`, compiled once: topic rules, templates, JMESPath expressions, the
time parser, and the metric-name rule. Shared by the mapped-JSON, plain-value and mapped
line-protocol decoders (`edge/decoders/mapped.py`, `edge/decoders/plain.py`)."""

from __future__ import annotations

import datetime as dt
import decimal
import fnmatch
import functools
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.parser

from edge.decoders.context import Context
from edge.decoders.topics import PatternError, TopicRules, compile_template
from edge.errors import DecodeError
from gateway.config import MappingSettings, MetricMapping
from gateway.errors import ConfigError, InvalidTokenError
from gateway.subjects import encode_token

_NS = 1_000_000_000
_ISO = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d{1,9})\d*)?)?"
    r"\s*(Z|z|[+-]\d\d:?\d\d)?"
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")
_NAMES_MAX = 10_000  # normalised names remembered per mapping
LEAF_NAMES = frozenset({"path", "key", "parent", "top"})  # template names of a JSON leaf
_ON = {"on": 1.0, "off": 0.0, "true": 1.0, "false": 0.0}


def on_off(text: str) -> float | None:
    """`ON`/`OFF`/`true`/`false` (any case) as 1/0; None for anything else."""
    return _ON.get(text.strip().lower())


def normalise(name: str, case: str) -> str:
    """A metric name under the chosen rule: `snake` (`ApparentPower` -> `apparent_power`,
    `switch:0.output` -> `switch_0_output`), `lower`, or `keep`."""
    if case == "keep":
        return name
    if case == "lower":
        return name.lower()
    return _NON_WORD.sub("_", _CAMEL.sub("_", name)).strip("_").lower()


Path = Callable[[Any], Any]


def _compile_path(key: str, expr: str) -> Path:
    try:
        parsed = jmespath.compile(expr)
    except jmespath.exceptions.JMESPathError as exc:
        raise ConfigError(f"{key}: not a JMESPath expression: {exc}") from None
    return parsed.search


@dataclass(frozen=True, slots=True)
class MetricRule:
    name: str  # the metric's token
    unit: str
    unit_path: Path | None
    scale: float


class TimeParser:
    """Event time from a payload value, in the configured format."""

    def __init__(self, key: str, fmt: str, zone: str) -> None:
        self.fmt = fmt
        try:
            self.zone: dt.tzinfo = dt.UTC if zone == "UTC" else zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{key}.time_zone: unknown time zone {zone!r}") from None

    def __call__(self, value: Any) -> int:
        fmt = self.fmt
        if isinstance(value, bool):
            raise DecodeError("invalid_time", repr(value))
        if isinstance(value, int | float):
            if fmt in ("iso8601",) or "%" in fmt:
                raise DecodeError("invalid_time", f"{value!r} is a number, not {fmt!r}")
            return _epoch(value, fmt)
        if not isinstance(value, str):
            raise DecodeError("invalid_time", f"{value!r} is not a time")
        if "%" in fmt:
            try:
                t = dt.datetime.strptime(value, fmt)
            except ValueError as exc:
                raise DecodeError("invalid_time", f"{value!r}: {exc}") from None
            if t.tzinfo is None:
                t = t.replace(tzinfo=self.zone)
            return _to_ns(t, t.microsecond * 1000)
        if fmt in ("auto", "iso8601"):
            return self.iso(value)
        try:
            return _epoch(float(value), fmt)
        except ValueError:
            raise DecodeError("invalid_time", f"{value!r} is not a number") from None

    def iso(self, text: str) -> int:
        """ISO 8601 / RFC 3339, nanoseconds kept; without an offset, in the time zone."""
        m = _ISO.fullmatch(text.strip())
        if m is None:
            raise DecodeError("invalid_time", f"{text!r} is not an ISO 8601 time")
        y, mo, d, h, mi, s, frac, off = m.groups()
        try:
            t = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0))
        except ValueError as exc:
            raise DecodeError("invalid_time", f"{text!r}: {exc}") from None
        if off is None:
            t = t.replace(tzinfo=self.zone)
        elif off in ("Z", "z"):
            t = t.replace(tzinfo=dt.UTC)
        else:
            sign = -1 if off[0] == "-" else 1
            hours, minutes = int(off[1:3]), int(off[-2:])
            t = t.replace(tzinfo=dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes)))
        return _to_ns(t, int((frac or "0").ljust(9, "0")))


def _to_ns(t: dt.datetime, frac_ns: int) -> int:
    whole = t.replace(microsecond=0)
    # fold=0 at a DST change: local times that happen twice take the first
    return int(whole.timestamp()) * _NS + frac_ns


def _epoch(value: float, fmt: str) -> int:
    if fmt == "auto":  # by magnitude: seconds until 5138, then ms, us, ns
        mag = abs(value)
        fmt = "s" if mag < 1e11 else "ms" if mag < 1e14 else "us" if mag < 1e17 else "ns"
    scale = {"s": _NS, "ms": 1_000_000, "us": 1_000, "ns": 1}[fmt]
    if isinstance(value, int):
        return value * scale
    # value * scale in binary floating point moves the digits the device wrote (Shelly's
    # "ts": 1734476334.51 gave ...509999872 ns); repr() is the shortest text that reads
    # back as this float, i.e. the number as written, so scale it in decimal instead.
    return round(decimal.Decimal(repr(value)) * scale)


class CompiledMapping:
    """Everything of a `[mapping]` table that the decoders need, compiled."""

    def __init__(self, key: str, s: MappingSettings) -> None:
        self.settings = s
        try:
            self.topics = TopicRules(s.topic_patterns, s.ignore_topics)
            self.site = compile_template(s.site) if s.site is not None else None
            self.device = compile_template(s.device)
            self.metric = compile_template(s.metric)
        except PatternError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        # `{top}` etc. in the device template: one device per sensor of a multi-sensor
        # payload (Tasmota's `AM2301`), so its temperature never merges with another's.
        self.device_per_leaf = bool(self.device.names & LEAF_NAMES)
        self.paths = {n: _compile_path(f"{key}.paths.{n}", e) for n, e in s.paths.items()}
        self.readings = _compile_path(f"{key}.readings", s.readings)
        self.when = None if s.when is None else _compile_path(f"{key}.when", s.when)
        self.time = None if s.time_path is None else _compile_path(f"{key}.time_path", s.time_path)
        self.seq = None if s.seq_path is None else _compile_path(f"{key}.seq_path", s.seq_path)
        self.parse_time = TimeParser(key, s.time_format, s.time_zone)
        self.rules = {
            normalise(k, s.metric_case): self._rule(f"{key}.metrics.{k}", k, m)
            for k, m in s.metrics.items()
        }
        self.include, self.skip = tuple(s.include), tuple(s.skip)
        self._names: dict[tuple[str, str], MetricRule | None] = {}

    def _rule(self, key: str, name: str, m: MetricMapping) -> MetricRule:
        unit_path = None if m.unit_path is None else _compile_path(f"{key}.unit_path", m.unit_path)
        try:
            token = encode_token("metric", normalise(m.name or name, self.settings.metric_case))
        except InvalidTokenError as exc:
            raise ConfigError(f"{key}.name: {exc}") from None
        return MetricRule(token, m.unit, unit_path, m.scale)

    def values(self, doc: Any, parts: Mapping[str, str]) -> dict[str, str]:
        """Template values: the topic's parts, then each of `paths` found in `doc`."""
        out = dict(parts)
        for name, path in self.paths.items():
            v = path(doc)
            if isinstance(v, str):
                out[name] = v
            elif isinstance(v, int | float) and not isinstance(v, bool):
                out[name] = repr(v) if isinstance(v, float) else str(v)
        return out

    def identity(self, ctx: Context, values: Mapping[str, str]) -> tuple[str, str]:
        """Site and device tokens (the name rule makes any name a token)."""
        site = ctx.site if self.site is None else self.site.render("site", values)
        device = self.device.render("device", values)
        return _token("site", site), _token("device", device)

    def rule(self, raw_path: str, values: Mapping[str, str]) -> MetricRule | None:
        """The metric a leaf becomes (None: skipped by `include`/`skip`), cached by the
        rendered name, since the same few recur in every message."""
        name = self.metric.render("metric", values)
        cache_key = (raw_path, name)
        if cache_key in self._names:
            return self._names[cache_key]
        norm = normalise(name, self.settings.metric_case)
        rule: MetricRule | None = self.rules.get(norm)
        if not self._wanted(raw_path, norm):
            rule = None
        elif rule is None:
            rule = MetricRule(_token("metric", norm), "", None, 1.0)
        if len(self._names) >= _NAMES_MAX:
            self._names.clear()
        self._names[cache_key] = rule
        return rule

    def _wanted(self, raw_path: str, name: str) -> bool:
        def hit(globs: tuple[str, ...]) -> bool:
            return any(
                fnmatch.fnmatchcase(raw_path, g) or fnmatch.fnmatchcase(name, g) for g in globs
            )

        if self.include and not hit(self.include):
            return False
        return not hit(self.skip)

    def unit(self, rule: MetricRule, doc: Any) -> str:
        unit = rule.unit or self.settings.unit
        if rule.unit_path is not None:
            found = rule.unit_path(doc)
            if isinstance(found, str) and found:
                unit = found
        return self.settings.units.get(unit, unit)

    def event_time(self, doc: Any, ctx: Context) -> int:
        if self.time is None:
            return ctx.received_ns
        found = self.time(doc)
        if found is None:  # optional in many payloads (Zigbee2MQTT's last_seen)
            return ctx.received_ns
        return self.parse_time(found)

    def sequence(self, doc: Any, no_seq: int) -> int:
        if self.seq is None:
            return no_seq
        found = self.seq(doc)
        if isinstance(found, bool) or not isinstance(found, int):
            raise DecodeError("invalid_seq", f"{self.settings.seq_path!r} gives {found!r}")
        return found

    def wanted_message(self, doc: Any) -> bool:
        return self.when is None or bool(self.when(doc))


class MappedDecoder:
    """What every mapped decoder does first: skip ignored topics, name the topic's parts."""

    def __init__(self, mapping: CompiledMapping) -> None:
        self.m = mapping

    def topic_parts(self, ctx: Context) -> dict[str, str] | None:
        """None for a topic that is not a device's (`ignore_topics`)."""
        if self.m.topics.ignored(ctx.topic):
            return None
        return self.m.topics.parts(ctx.topic)


@functools.lru_cache(maxsize=4096)  # the same few names recur in every message
def _token(kind: str, name: str) -> str:
    try:
        return encode_token(kind, name)
    except InvalidTokenError as exc:
        raise DecodeError(f"invalid_{kind}", str(exc)) from None

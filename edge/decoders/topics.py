"""Topic patterns with named segments, and name templates that use them.

A pattern is an MQTT topic whose levels may hold named parts:

    tele/{device}/SENSOR                        one level, named `device`
    zigbee2mqtt/{device...}                     the rest of the topic, `/` included
    shellies/{device}/relay/{channel}/{metric}  several names
    v3/{app}@{tenant}/devices/{device}/up       a name may be part of a level
    +                                           any one level, unnamed

`match()` gives the named parts of a topic, or None. A template (`{device}-{channel}`,
`relay{channel}_{metric}`, a constant) builds a name from such parts and from what the
payload gives (JSON keys, line-protocol tags); `{name?}` is optional: when `name` is
absent, it and the literal text just before it are left out (`{host}-{sensor?}` ->
`localhost` when there is no `sensor` tag).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from edge.errors import DecodeError

_PART = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.|\?)?\}")


class PatternError(ValueError):
    """A pattern or template that cannot be compiled; raised at config load."""


@dataclass(frozen=True, slots=True)
class TopicPattern:
    text: str
    regex: re.Pattern[str]
    names: tuple[str, ...]

    def match(self, topic: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(topic)
        return None if m is None else m.groupdict()


def compile_pattern(text: str) -> TopicPattern:
    levels = text.split("/")
    out: list[str] = []
    names: list[str] = []
    for i, level in enumerate(levels):
        if level == "+":
            out.append("[^/]+")
            continue
        if level == "#":
            if i != len(levels) - 1:
                raise PatternError(f"{text!r}: '#' must be the last level")
            out.append(".*")
            continue
        pos, parts = 0, []
        for m in _PART.finditer(level):
            parts.append(re.escape(level[pos : m.start()]))
            name, suffix = m.group(1), m.group(2)
            if name in names:
                raise PatternError(f"{text!r}: {{{name}}} appears twice")
            if suffix == "?":
                raise PatternError(f"{text!r}: '?' is for templates, not topic patterns")
            names.append(name)
            parts.append(f"(?P<{name}>.+?)" if suffix == "..." else f"(?P<{name}>[^/]+?)")
            pos = m.end()
        rest = level[pos:]
        if "{" in rest or "}" in rest or "+" in rest or "#" in rest:
            raise PatternError(f"{text!r}: cannot read level {level!r}")
        parts.append(re.escape(rest))
        out.append("".join(parts))
    return TopicPattern(text, re.compile("/".join(out)), tuple(names))


@dataclass(frozen=True, slots=True)
class _Piece:
    literal: str  # the text before the name
    name: str | None  # None: a trailing literal
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    pieces: tuple[_Piece, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.pieces if p.name is not None)

    def render(self, kind: str, values: Mapping[str, str]) -> str:
        out: list[str] = []
        for p in self.pieces:
            if p.name is None:
                out.append(p.literal)
                continue
            value = values.get(p.name)
            if value is None or value == "":
                if p.optional:
                    continue
                raise DecodeError(f"missing_{kind}", f"{self.text!r}: no {{{p.name}}}")
            out.append(p.literal)
            out.append(value)
        return "".join(out)


def compile_template(text: str) -> Template:
    pieces: list[_Piece] = []
    pos = 0
    for m in _PART.finditer(text):
        if m.group(2) == "...":
            raise PatternError(f"{text!r}: '...' is for topic patterns, not templates")
        pieces.append(_Piece(text[pos : m.start()], m.group(1), m.group(2) == "?"))
        pos = m.end()
    rest = text[pos:]
    if "{" in rest or "}" in rest:
        raise PatternError(f"{text!r}: unbalanced braces")
    if rest:
        pieces.append(_Piece(rest, None))
    return Template(text, tuple(pieces))


class TopicRules:
    """The patterns of one source: the first that matches gives the topic's parts; a
    topic matching an `ignore` pattern is not a device's (Zigbee2MQTT's `bridge/`)."""

    def __init__(self, patterns: list[str], ignore: list[str]) -> None:
        self.patterns = [compile_pattern(p) for p in patterns]
        self.ignore = [compile_pattern(p) for p in ignore]

    def ignored(self, topic: str) -> bool:
        return any(p.match(topic) is not None for p in self.ignore)

    def parts(self, topic: str) -> dict[str, str]:
        """The named parts of `topic`, or `DecodeError("topic_mismatch")`. No patterns:
        `{device}` is the last level (the agent's rule for topics without a pattern)."""
        if not self.patterns:
            return {"device": topic.rsplit("/", 1)[-1]}
        for p in self.patterns:
            found = p.match(topic)
            if found is not None:
                return found
        raise DecodeError("topic_mismatch", f"{topic!r} matches none of the topic patterns")

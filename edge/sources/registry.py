"""Which source each `[[sources]]` table makes: settings type -> constructor, in one place.

A new source adds its settings model to `gateway.config.SourceSettings`, its module here
under `edge/sources/`, and one `register` line below; the agent only calls `build`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from edge.sources import Deliver, Source
from edge.sources.mqtt import MqttSource
from edge.sources.serial import SerialSource
from gateway.config import MqttSourceSettings, SerialSourceSettings, SourceSettings

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What the agent gives every source besides its own settings."""

    name: str  # `mqtt0`, `serial1`, ...: see `edge.intake.source_names`
    client_id: str  # a default client id, unique per source of this agent
    deliver: Deliver


_MAKERS: dict[type[Any], Callable[[Any, SourceContext], Source]] = {}


def register(kind: type[S], make: Callable[[S, SourceContext], Source]) -> None:
    _MAKERS[kind] = make


def build(settings: SourceSettings, ctx: SourceContext) -> Source:
    """The source for `settings`, constructed (not started)."""
    try:
        make = _MAKERS[type(settings)]
    except KeyError:
        raise TypeError(f"no source registered for {type(settings).__name__}") from None
    return make(settings, ctx)


def _mqtt(settings: MqttSourceSettings, ctx: SourceContext) -> Source:
    return MqttSource(ctx.name, settings, settings.client_id or ctx.client_id, ctx.deliver)


def _serial(settings: SerialSourceSettings, ctx: SourceContext) -> Source:
    return SerialSource(ctx.name, settings, ctx.deliver)


register(MqttSourceSettings, _mqtt)
register(SerialSourceSettings, _serial)

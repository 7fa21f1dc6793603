"""Which source each `[[sources]]` table makes: settings type -> constructor, in one place.

A new source adds its settings model to `gateway.config.SourceSettings`, its module here
under `edge/sources/`, and one case to `build` below; the agent only calls `build`.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.sources import Deliver, Source
from edge.sources.mqtt import MqttSource
from edge.sources.serial import SerialSource
from gateway.config import MqttSourceSettings, SerialSourceSettings, SourceSettings


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What the agent gives every source besides its own settings."""

    name: str  # `mqtt0`, `serial1`, ...: see `edge.intake.source_names`
    client_id: str  # a default client id, unique per source of this agent
    deliver: Deliver


def build(settings: SourceSettings, ctx: SourceContext) -> Source:
    """The source for `settings`, constructed (not started)."""
    if isinstance(settings, MqttSourceSettings):
        return MqttSource(ctx.name, settings, settings.client_id or ctx.client_id, ctx.deliver)
    if isinstance(settings, SerialSourceSettings):
        return SerialSource(ctx.name, settings, ctx.deliver)
    raise TypeError(f"no source for {type(settings).__name__}")

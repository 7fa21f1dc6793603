"""Payload decoders: bytes from a source -> readings, or a `DecodeError` with a reason.

Every decoder is a pure function `(payload, context) -> list[Reading]`; the context says
what the payload itself may not: the site, a default device (the last MQTT topic level or
the serial port's configured device) and the receive time for readings without one.
"""

from __future__ import annotations

from collections.abc import Callable

from edge.decoders.context import Context, SeriesColumns
from edge.decoders.frame import decode_frame
from edge.decoders.json_readings import decode_json
from edge.decoders.line_protocol import decode_line
from edge.decoders.mapped import MappedJson, MappedLine, TopicDefaults
from edge.decoders.mapping import CompiledMapping
from edge.decoders.plain import PlainValue
from edge.decoders.senml import decode_senml, decode_senml_columns
from gateway.config import MappingSettings
from gateway.reading import Reading

Decoder = Callable[[bytes, Context], list[Reading]]
ColumnDecoder = Callable[[bytes, Context], list[SeriesColumns] | None]

DECODERS: dict[str, Decoder] = {
    "json": decode_json,
    "senml": decode_senml,
    "line": decode_line,
    "frame": decode_frame,
}
# Formats that carry many readings per message also decode straight into columns.
COLUMN_DECODERS: dict[str, ColumnDecoder] = {"senml": decode_senml_columns}
# Formats read through a source's `[mapping]` (docs/devices.md): built per source.
MAPPED_DECODERS: dict[str, Callable[[CompiledMapping], Decoder]] = {
    "mapped": MappedJson,
    "value": PlainValue,
    "line": MappedLine,
}


def _sparkplug(mapping: CompiledMapping) -> Decoder:
    # imported here: protobuf and the Tahu schema are about 11 MiB of resident memory,
    # which only an agent with a Sparkplug B source should pay (docs/benchmarks.md)
    from edge.decoders.sparkplug import SparkplugDecoder

    return SparkplugDecoder(mapping)


# Formats whose decoder keeps state per source; a mapping is optional (its defaults apply).
STATEFUL_DECODERS: dict[str, Callable[[CompiledMapping], Decoder]] = {
    "sparkplug": _sparkplug,
}
_SPARKPLUG_DEFAULTS = MappingSettings(device="{edge_node}/{device?}")


def build_decoder(key: str, fmt: str, mapping: MappingSettings | None) -> Decoder:
    """The decoder of one source: `DECODERS[fmt]`, or, with a mapping, the mapped form of
    the format. `ConfigError` naming `key` (`sources.0.mapping`) if the mapping is wrong."""
    stateful = STATEFUL_DECODERS.get(fmt)
    if stateful is not None:
        return stateful(CompiledMapping(key, mapping or _SPARKPLUG_DEFAULTS))
    if mapping is None:
        return DECODERS[fmt]
    compiled = CompiledMapping(key, mapping)
    make = MAPPED_DECODERS.get(fmt)
    if make is not None:
        return make(compiled)
    return TopicDefaults(compiled, DECODERS[fmt])


__all__ = [
    "COLUMN_DECODERS",
    "DECODERS",
    "MAPPED_DECODERS",
    "ColumnDecoder",
    "Context",
    "Decoder",
    "SeriesColumns",
    "build_decoder",
    "decode_frame",
    "decode_json",
    "decode_line",
    "decode_senml",
]

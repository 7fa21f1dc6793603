"""Sparkplug B: the decoder (`decoder.py`), per-node state (`state.py`), topics and payloads.

`sparkplug_b_pb2.py` / `.pyi` are generated from `sparkplug_b.proto` (see its header)."""

from edge.decoders.sparkplug.decoder import ONLINE_METRIC, SparkplugDecoder

__all__ = ["ONLINE_METRIC", "SparkplugDecoder"]

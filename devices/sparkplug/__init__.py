"""Sparkplug B's wire protocol, shared by the simulator's edge nodes and the agent's decoder:
the payload (protobuf; `sparkplug_b_pb2.py` / `.pyi` are generated from `sparkplug_b.proto`,
see its header) and its helpers (`payload.py`)."""

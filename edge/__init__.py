"""The edge agent: sources -> decoders -> validation -> batcher -> durable buffer -> uplink."""

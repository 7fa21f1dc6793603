"""The cloud tier: JetStream streams, the windowed aggregator, and the views."""

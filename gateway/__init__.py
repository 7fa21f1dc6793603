"""Shared core of the IoT ingestion gateway: readings, subjects, envelope, codecs, config,
embedded servers and the `gateway` command."""

__version__ = "0.1.0"

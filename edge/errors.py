"""Errors of the edge agent."""

from __future__ import annotations

from gateway.errors import GatewayError


class DecodeError(GatewayError, ValueError):
    """A payload or reading that cannot be accepted; `reason` is a short stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BufferStoreError(GatewayError):
    """The durable buffer cannot take or give data (disk full, I/O error)."""


class BufferFull(BufferStoreError):
    """Overflow policy `block`: the flush does not fit; hold it and retry after a drain."""


class PublishFailed(GatewayError):
    """Some batches of a window were not acknowledged; the acknowledged ones are deleted."""


class BufferKeyError(BufferStoreError):
    """The buffer's encryption key file is missing, unusable, or not the buffer's key."""


class TamperedError(BufferStoreError):
    """A stored payload failed authentication: it was changed outside the agent."""

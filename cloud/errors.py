"""Errors of the cloud tier."""

from __future__ import annotations

from gateway.errors import GatewayError


class QueryError(GatewayError):
    """A history query that could not be answered (NATS unreachable, no JetStream leader)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"query failed: {reason}")
        self.reason = reason


class Abandoned(GatewayError):
    """A publish given up on while stopping; nothing after it may be checkpointed."""


class TokenFileError(GatewayError):
    """The API's token file cannot be read or has a bad line (the line is named, not shown)."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"token file {path}: {reason}")
        self.reason = reason


class TooManyClients(GatewayError):
    """A live view refused: the configured number of clients is reached (HTTP 503)."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"too many live clients (the cap is {cap})")
        self.cap = cap

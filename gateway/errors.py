"""Small, structured errors shared by every part of the gateway."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of the gateway's own errors."""


class InvalidTokenError(GatewayError, ValueError):
    """A name that cannot be used as one token of a NATS subject."""

    def __init__(self, kind: str, value: str, reason: str) -> None:
        super().__init__(f"invalid {kind} {value!r}: {reason}")
        self.kind = kind
        self.value = value
        self.reason = reason


class CodecError(GatewayError, ValueError):
    """A payload that does not decode as the format it claims to be."""


class ConfigError(GatewayError):
    """A configuration file that is missing, unreadable or invalid; names the bad key."""


class ServerStartError(GatewayError):
    """An embedded server that exited or never became ready; carries its last log lines."""

    def __init__(self, name: str, reason: str, log_tail: str = "") -> None:
        detail = f"\n--- last lines of its log ---\n{log_tail}" if log_tail else ""
        super().__init__(f"{name} failed to start: {reason}{detail}")
        self.name = name
        self.reason = reason
        self.log_tail = log_tail

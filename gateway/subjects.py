"""NATS subjects of the gateway, and validation of the tokens that go into them.

Device, site and metric names come from the field; a dot, a space or a wildcard in one of
them would change which subject a message lands on, so each token is checked here.
"""

from __future__ import annotations

import re

from gateway.errors import InvalidTokenError

_TOKEN = re.compile(r"[A-Za-z0-9_\-]{1,64}")
TELEMETRY_STREAM = "TELEMETRY"
AGG_STREAM = "AGG"
DLQ_STREAM = "DLQ"
LATEST_BUCKET = "AGG_LATEST"


def check_token(kind: str, value: str) -> str:
    """Return `value` if it is a safe subject token, else raise `InvalidTokenError`."""
    if not isinstance(value, str):
        raise InvalidTokenError(kind, repr(value), "not a string")
    if not _TOKEN.fullmatch(value):
        if not value:
            reason = "empty"
        elif len(value) > 64:
            reason = "longer than 64 characters"
        else:
            reason = "only letters, digits, '_' and '-' are allowed"
        raise InvalidTokenError(kind, value, reason)
    return value


def telemetry(site: str, agent: str) -> str:
    return f"telemetry.{check_token('site', site)}.{check_token('agent', agent)}"


def dlq(site: str, agent: str) -> str:
    return f"dlq.{check_token('site', site)}.{check_token('agent', agent)}"


def status(site: str, agent: str) -> str:
    return f"status.{check_token('site', site)}.{check_token('agent', agent)}"


def agg(window: str, site: str, device: str, metric: str) -> str:
    return (
        f"agg.{check_token('window', window)}.{check_token('site', site)}."
        f"{check_token('device', device)}.{check_token('metric', metric)}"
    )

"""NATS subjects of the gateway, and validation of the tokens that go into them.

Device, site and metric names come from the field; a dot, a space or a wildcard in one of
them would change which subject a message lands on, so each token is checked here.
"""

from __future__ import annotations

import re

from gateway.errors import InvalidTokenError

_TOKEN = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_KV_KEY = re.compile(r"[-/_=.A-Za-z0-9]+")  # what NATS allows in a KV key
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
    """The AGG subject of one series' window results: `agg.<window>.<site>.<device>.<metric>`."""
    return f"agg.{latest_key(window, site, device, metric)}"


def latest_key(window: str, site: str, device: str, metric: str) -> str:
    """The `AGG_LATEST` key of one series: `<window>.<site>.<device>.<metric>`."""
    return (
        f"{check_token('window', window)}.{check_token('site', site)}."
        f"{check_token('device', device)}.{check_token('metric', metric)}"
    )


def latest_filter(
    *,
    window: str | None = None,
    site: str | None = None,
    device: str | None = None,
    metric: str | None = None,
) -> str:
    """A key filter of `AGG_LATEST` (and, after `agg.`, of AGG): `*` for each None."""
    given = (("window", window), ("site", site), ("device", device), ("metric", metric))
    return ".".join("*" if v is None else check_token(k, v) for k, v in given)


def agg_filter(key_filter: str) -> str:
    """The AGG subjects of the series an `AGG_LATEST` key filter (`latest_filter`) selects."""
    return f"agg.{key_filter}"


def kv_subject(bucket: str, key: str) -> str:
    """The subject a put of `key` in KV bucket `bucket` is published to: `$KV.<bucket>.<key>`."""
    if not _KV_KEY.fullmatch(key) or key.startswith(".") or key.endswith("."):
        raise InvalidTokenError("key", key, "not a valid KV key")
    return f"$KV.{check_token('bucket', bucket)}.{key}"

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


# The escape of `encode_token`: `__` and two upper-case hex digits stand for one UTF-8 byte.
_ESCAPED = re.compile(r"__([0-9A-F]{2})")
_PLAIN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


def encode_token(kind: str, name: str) -> str:
    """Any non-empty name as a valid subject token, by a reversible rule (`decode_token`
    undoes it), so two different names never become the same token.

    Letters, digits and `-` stay; every other byte of the UTF-8 name becomes `__XX` (two
    upper-case hex digits): `urn:dev:ow:1` -> `urn__3Adev__3Aow__3A1`, `kitchen/weather`
    -> `kitchen__2Fweather`. A `_` stays too, unless `_XX` follows it (then it is escaped
    itself, as `__5F`), so a valid token without `__XX` in it is unchanged.
    `InvalidTokenError` if the name is empty or its token is over 64 characters (cutting
    it short would let two names meet)."""
    if not isinstance(name, str):
        raise InvalidTokenError(kind, repr(name), "not a string")
    out: list[str] = []
    for i, ch in enumerate(name):
        if ch in _PLAIN_CHARS or (ch == "_" and not _ESCAPED.match("_" + name[i + 1 : i + 4])):
            out.append(ch)
        else:
            out.extend(f"__{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return check_token(kind, "".join(out))


def decode_token(token: str) -> str:
    """The name `encode_token` made `token` from."""
    raw = bytearray()
    i = 0
    while i < len(token):
        m = _ESCAPED.match(token, i)
        if m:
            raw.append(int(m.group(1), 16))
            i = m.end()
        else:
            raw.extend(token[i].encode())
            i += 1
    return raw.decode("utf-8", "surrogatepass")

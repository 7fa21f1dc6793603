"""Authentication of the HTTP API: bearer tokens with a role, and a `Host` allow-list.

A token is `gw_` + 32 random bytes (URL-safe base64). Only its SHA-256 is stored (one
JSON line per token in the token file, written 0600), so the file does not leak usable
tokens; a request's token is hashed and compared in constant time. Roles: `viewer` reads
every `/api/` route; `admin` may do the same and whatever admin routes are added later.
`/healthz` stays open (liveness probes) and says nothing but whether NATS is connected.
Tokens never reach a log: the access log is off and errors name the token's id, not it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web
from yarl import URL

from cloud.errors import TokenFileError

Role = Literal["viewer", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "admin")
TOKEN_PREFIX = "gw_"
DEFAULT_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
OPEN_PATHS = frozenset({"/healthz", "/dashboard/login"})
SESSION_COOKIE = "gw_session"  # the dashboard's login (cloud/views/dashboard/session.py)


@dataclass(frozen=True)
class TokenRecord:
    id: str
    role: Role
    sha256: str

    def to_json(self) -> bytes:
        return orjson.dumps({"id": self.id, "role": self.role, "sha256": self.sha256})


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _parse_line(path: Path, n: int, line: str) -> TokenRecord:
    try:
        doc = orjson.loads(line)
        role = doc["role"]
        if role not in ROLES:
            raise ValueError(f"role {role!r}")
        return TokenRecord(str(doc["id"]), role, str(doc["sha256"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise TokenFileError(path, f"line {n}: {exc}") from None


def load_tokens(path: Path) -> tuple[TokenRecord, ...]:
    """The token file's records; a missing file is no tokens (every request is refused)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise TokenFileError(path, exc.strerror or str(exc)) from None
    return tuple(
        _parse_line(path, n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()
    )


def create_token(path: Path, role: Role) -> tuple[TokenRecord, str]:
    """Append a new token of `role` to the file; returns its record and the token itself
    (shown once, to whoever ran `gateway cloud token create`)."""
    if role not in ROLES:
        raise TokenFileError(path, f"role {role!r}: expected one of {', '.join(ROLES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = TokenRecord(secrets.token_hex(4), role, _digest(token))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab") as f:
        f.write(record.to_json() + b"\n")
    return record, token


@dataclass(frozen=True)
class ApiAuth:
    """What the API accepts: these tokens, from these `Host`s."""

    tokens: tuple[TokenRecord, ...]
    allowed_hosts: frozenset[str] = DEFAULT_HOSTS

    @classmethod
    def from_file(cls, path: Path, allowed_hosts: frozenset[str] = DEFAULT_HOSTS) -> ApiAuth:
        return cls(load_tokens(path), allowed_hosts)

    def role_of(self, token: str) -> Role | None:
        digest = _digest(token)
        found: Role | None = None
        for record in self.tokens:  # every record compared: no early exit to time
            if hmac.compare_digest(record.sha256, digest):
                found = record.role
        return found

    def host_allowed(self, host: str | None) -> bool:
        """`Host` without its port is in the allow-list (IPv6 hosts without brackets)."""
        if not host:
            return False
        try:
            name = URL(f"http://{host}").host
        except ValueError:
            return False
        return bool(name) and str(name).lower().strip("[]") in self.allowed_hosts


class Sessions:
    """The dashboard's logins: a random session id (in an HttpOnly cookie) -> the role of
    the token it was opened with, until it expires. In memory: a restart logs everyone out."""

    def __init__(self, ttl_s: float = 12 * 3600) -> None:
        self.ttl_s = ttl_s
        self._open: dict[str, tuple[Role, float]] = {}

    def open(self, role: Role) -> str:
        sid = secrets.token_urlsafe(32)
        self._open[sid] = (role, time.monotonic() + self.ttl_s)
        return sid

    def close(self, sid: str) -> None:
        self._open.pop(sid, None)

    def role_of(self, sid: str) -> Role | None:
        found = self._open.get(sid) if sid else None
        if found is None:
            return None
        if found[1] < time.monotonic():
            del self._open[sid]
            return None
        return found[0]


ROLE_KEY = web.RequestKey("role", str)
SESSIONS_KEY = web.AppKey("sessions", Sessions)
AUTH_KEY = web.AppKey("auth", ApiAuth)


def _refuse(status: int, text: str, challenge: bool = False) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="gateway"'} if challenge else None
    return web.json_response({"error": text}, status=status, headers=headers)


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@web.middleware
async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
    """Unknown `Host`: 421 (DNS rebinding); no or unknown token: 401; else the role is
    kept on the request (`ROLE_KEY`) for the handlers."""
    auth = request.app[AUTH_KEY]
    if not auth.host_allowed(request.headers.get("Host")):
        return _refuse(421, "unknown Host (add it to the API's allowed hosts)")
    if request.path not in OPEN_PATHS:
        token = bearer(request)
        role = auth.role_of(token) if token else None
        if role is None and SESSIONS_KEY in request.app:
            role = request.app[SESSIONS_KEY].role_of(request.cookies.get(SESSION_COOKIE, ""))
        if role is None:
            if request.method == "GET" and request.path.startswith("/dashboard"):
                raise web.HTTPSeeOther("/dashboard/login")  # a person, not a client: log in
            return _refuse(401, "a valid bearer token is required", challenge=True)
        request[ROLE_KEY] = role
    response: web.StreamResponse = await handler(request)
    return response

"""One way every process connects to the cloud tier's NATS: TLS verified against the
configured CA, and a credentials file (a user JWT and its nkey seed).

There is no plain-TCP path: nats-server refuses those (TLS is required by its config),
and the client never offers one.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from gateway.config import NatsSettings

DEFAULT_INBOX = "_INBOX"
ErrorCallback = Callable[[Exception], Awaitable[None]]
# What closing or draining a connection may raise once the server is gone. AttributeError:
# nats-py 2.16 over TLS flushes its pending bytes into asyncio's already-closed SSL
# transport (`'NoneType' object has no attribute '_write_appdata'`).
CLOSE_ERRORS: tuple[type[BaseException], ...] = (
    NatsError, TimeoutError, OSError, AttributeError,
)  # fmt: skip


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verifies the server's certificate and name against `ca_file` (or the system CAs)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def connect(
    settings: NatsSettings,
    name: str,
    *,
    inbox_prefix: str = DEFAULT_INBOX,
    reconnect: bool = True,
    error_cb: ErrorCallback | None = None,
) -> NatsClient:
    """Connect once (raising on failure). `settings.url` may list several servers (a
    cluster), comma-separated; `inbox_prefix` is an agent's own (gateway.permissions)."""
    extra = {"error_cb": error_cb} if error_cb else {}
    return await nats.connect(
        settings.url.split(","),
        **extra,
        name=name,
        tls=tls_context(settings.ca_file),
        user_credentials=str(settings.creds_file) if settings.creds_file else None,
        inbox_prefix=inbox_prefix,
        connect_timeout=settings.connect_timeout_s,
        allow_reconnect=reconnect,
        max_reconnect_attempts=-1 if reconnect else 0,
        reconnect_time_wait=0.5,
    )


async def close(nc: NatsClient) -> None:
    """Drain `nc` if it is connected, else close it. Never leave it open: nats-py refuses
    to drain a connection that is reconnecting (`ConnectionReconnectingError`), and its
    reconnect task, left running, swallows the cancellation at the end of `asyncio.run`
    (Python 3.11's `wait_for`), so a process whose server was down hung on exit."""
    with contextlib.suppress(*CLOSE_ERRORS):
        if nc.is_connected:
            await nc.drain()
    if not nc.is_closed:
        with contextlib.suppress(*CLOSE_ERRORS):
            await nc.close()


@contextlib.asynccontextmanager
async def nats_connection(settings: NatsSettings, name: str) -> AsyncIterator[NatsClient]:
    nc = await connect(settings, name)
    try:
        yield nc
    finally:
        await close(nc)


def cli_settings(
    url: str, ca_file: Path | None, creds_file: Path | None, role: str = "admin"
) -> NatsSettings:
    """Settings for a command-line tool: `--ca` / `--creds` if given, else the files
    `gateway cloud up` wrote under ./var/cloud on this machine, if there are any."""
    local = Path("var/cloud")
    ca = ca_file or _if_exists(local / "tls" / "ca.pem")
    creds = creds_file or _if_exists(local / "auth" / "creds" / f"{role}.creds")
    return NatsSettings(url=url, ca_file=ca, creds_file=creds)


def _if_exists(path: Path) -> Path | None:
    return path if path.exists() else None

"""Run an aiohttp application for the duration of a `with` block, over HTTPS by default.

HTTPS whenever there is a certificate: the operator's own (`--tls-cert/--tls-key`), or one
the cloud's CA issues under its data dir (`tls/http.pem`, made on first start). Plain HTTP
only on 127.0.0.1 and only when there is neither: a token sent in clear never leaves the
machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.errors import ConfigError
from gateway.pki import ensure_http_cert

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class HttpTls:
    """The server certificate (chain) and key the API presents."""

    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--tls-cert {self.cert} / --tls-key {self.key}: {exc}") from None
        return ctx


def http_tls(
    data_dir: Path, cert: Path | None = None, key: Path | None = None, names: tuple[str, ...] = ()
) -> HttpTls | None:
    """The operator's certificate; else one from the CA in `data_dir/tls`; else None."""
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if cert is not None and key is not None:
        return HttpTls(cert, key)
    tls_dir = data_dir / "tls"
    if not (tls_dir / "ca.pem").exists():
        return None
    files = ensure_http_cert(tls_dir, names)
    return HttpTls(files.cert, files.key)


def check_bind(host: str, tls: HttpTls | None) -> None:
    if tls is None and not _is_loopback(host):
        raise ConfigError(
            f"--host {host}: plain HTTP is served on 127.0.0.1 only; give --tls-cert and "
            "--tls-key, or a --data-dir with the cloud's CA (tls/)"
        )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def base_url(host: str, port: int, tls: HttpTls | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application, port: int, tls: HttpTls | None = None, host: str = LOOPBACK
) -> AsyncIterator[int]:
    """Serve `app` on `host`:`port` (0 picks a free port); yields the bound port."""
    check_bind(host, tls)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls.context() if tls else None)
    await site.start()
    try:
        sockets = getattr(site._server, "sockets", None) or []
        yield int(sockets[0].getsockname()[1]) if sockets else port
    finally:
        await runner.cleanup()

"""HTTPS for the API and dashboard: a certificate from the cloud's own CA (tls/http.pem),
verified by clients that trust that CA; plain HTTP is refused on an HTTPS port, and plain
HTTP is never served off loopback."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import aiohttp
import pytest
from nats.aio.client import Client as NatsClient

from cloud.httpd import check_bind, http_tls
from cloud.views.auth import SESSION_COOKIE, ApiAuth, create_token
from cloud.views.http import http_api
from gateway.errors import ConfigError
from gateway.security import CloudSecurity


def _trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


async def test_https_with_the_clouds_ca_200_with_token_401_without_plain_refused(
    nc: NatsClient, tmp_path: Path
) -> None:
    cloud_dir = tmp_path / "cloud-security"  # the dir `nc`'s server was secured from
    CloudSecurity.ensure(cloud_dir)
    tls = http_tls(cloud_dir)
    assert tls is not None and tls.cert == cloud_dir / "tls" / "http.pem"
    assert (tls.key.stat().st_mode & 0o777) == 0o600
    tokens = tmp_path / "tokens.jsonl"
    token = create_token(tokens, "viewer")[1]
    ca = _trusting(cloud_dir / "tls" / "ca.pem")
    async with http_api(nc, 0, ApiAuth.from_file(tokens), tls=tls) as port:
        url = f"https://127.0.0.1:{port}/api/latest"
        async with aiohttp.ClientSession() as http:
            async with http.get(url, ssl=ca, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
            async with http.get(url, ssl=ca) as r:
                assert r.status == 401
            async with http.get(f"https://localhost:{port}/healthz", ssl=ca) as r:
                assert r.status == 200  # the certificate names localhost too
            # Over HTTPS the dashboard's session cookie is Secure (and HttpOnly, Strict).
            login = f"https://127.0.0.1:{port}/dashboard/login"
            async with http.post(login, data={"token": token}, ssl=ca, allow_redirects=False) as r:
                assert r.status == 303
                cookie = r.cookies[SESSION_COOKIE]
                assert cookie["secure"] and cookie["httponly"]
            # A client that does not trust the CA stops at the handshake...
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(url, ssl=ssl.create_default_context()):
                    pass
            # ...and plain HTTP to the HTTPS port gets no answer at all.
            with pytest.raises(aiohttp.ClientError):
                async with http.get(
                    f"http://127.0.0.1:{port}/api/latest",
                    headers={"Authorization": f"Bearer {token}"},
                ) as r:
                    pytest.fail(f"plain HTTP answered {r.status}")


def test_plain_http_only_on_loopback_and_without_a_ca(tmp_path: Path) -> None:
    assert http_tls(tmp_path / "no-cloud-here") is None
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(ConfigError, match=re.escape("plain HTTP is served on 127.0.0.1 only")):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigError, match="go together"):
        http_tls(tmp_path, cert=tmp_path / "c.pem")
    # A CA without its key (a views host that got only ca.pem) cannot issue: say so.
    (tmp_path / "views" / "tls").mkdir(parents=True)
    (tmp_path / "views" / "tls" / "ca.pem").write_text("x")
    with pytest.raises(ConfigError, match=re.escape("no ca.pem + ca-key.pem to issue http.pem")):
        http_tls(tmp_path / "views")


def test_the_operators_own_certificate_is_used_and_checked(tmp_path: Path) -> None:
    security = CloudSecurity.ensure(tmp_path / "c")
    own = http_tls(tmp_path / "elsewhere", security.tls.cert, security.tls.key)
    assert own is not None and own.cert == security.tls.cert
    own.context()  # loads
    broken = http_tls(tmp_path, tmp_path / "missing.pem", tmp_path / "missing-key.pem")
    assert broken is not None
    with pytest.raises(ConfigError, match="--tls-cert"):
        broken.context()

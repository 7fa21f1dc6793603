"""The HTTP API's authentication: 401 without a token, 200 with one, 421 for an unknown
`Host`, and no token in any log, `/metrics` or `/healthz`."""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
from nats.aio.client import Client as NatsClient

from cloud.errors import TokenFileError
from cloud.views.auth import ApiAuth, create_token, load_tokens
from cloud.views.http import http_api
from gateway.servers import free_port
from tests.helpers import eventually, gateway


async def test_401_without_token_200_with_and_host_check(nc: NatsClient, tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    viewer = create_token(path, "viewer")[1]
    admin = create_token(path, "admin")[1]
    assert path.stat().st_mode & 0o777 == 0o600
    assert viewer not in path.read_text() and admin not in path.read_text()
    auth = ApiAuth.from_file(path)
    async with http_api(nc, 0, auth) as port, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/api/latest"
        for headers in ({}, {"Authorization": "Bearer gw_wrong"}, {"Authorization": viewer}):
            async with http.get(url, headers=headers) as r:
                assert r.status == 401, headers
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        for token in (viewer, admin):
            async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
        good = {"Authorization": f"Bearer {viewer}"}
        async with http.get(url, headers={**good, "Host": "evil.example:80"}) as r:
            assert r.status == 421
        async with http.get(url, headers={**good, "Host": f"localhost:{port}"}) as r:
            assert r.status == 200
        async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200 and viewer not in await r.text()


async def _ca_context(ca: Path) -> ssl.SSLContext | None:
    exists = await asyncio.to_thread(ca.exists)
    return ssl.create_default_context(cafile=str(ca)) if exists else None


def test_bad_token_file_names_the_line_not_its_content(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    path.write_text('{"id": "a", "role": "root", "sha256": "secret-ish"}\n')
    with pytest.raises(TokenFileError, match="line 1") as err:
        load_tokens(path)
    assert "secret-ish" not in str(err.value)
    assert load_tokens(tmp_path / "absent") == ()


async def test_cloud_up_token_never_in_logs_metrics_or_healthz(tmp_path: Path) -> None:
    """`gateway cloud up` with a token created by `gateway cloud token create`: requests
    with and without it, then its output, log files, /metrics and /healthz are grepped."""
    data = tmp_path / "cloud"
    code, out, _ = await gateway(
        "cloud", "token", "create", "--role", "viewer", "--data-dir", str(data)
    )  # fmt: skip
    token = out.strip()
    assert code == 0 and token.startswith("gw_")
    http_port, metrics_port = free_port(), free_port()
    log = tmp_path / "up.log"
    sink = await asyncio.to_thread(log.open, "wb")
    with sink:
        up = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app", "cloud", "up", "--data-dir", str(data),
            "--port", str(free_port()), "--http-port", str(http_port),
            "--metrics-port", str(metrics_port), stdout=sink, stderr=sink,
        )  # fmt: skip
        try:
            # `cloud up` serves HTTPS with a certificate from its own CA (tls/http.pem).
            found = await eventually(
                lambda: _ca_context(data / "tls" / "ca.pem"), lambda c: c is not None
            )
            assert found is not None
            ca: ssl.SSLContext = found
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca)) as http:
                base = f"https://127.0.0.1:{http_port}"

                async def status(headers: dict[str, str]) -> int:
                    try:
                        async with http.get(f"{base}/api/latest", headers=headers) as r:
                            return r.status
                    except aiohttp.ClientConnectionError:
                        return 0

                good = {"Authorization": f"Bearer {token}"}
                assert await eventually(lambda: status(good), lambda s: s == 200, timeout=60)
                assert await status({}) == 401
                assert await status({"Authorization": f"Bearer {token}x"}) == 401
                texts = []
                for path in ("/healthz", "/metrics"):
                    url = f"http://127.0.0.1:{metrics_port}{path}"
                    async with http.get(url) as r:
                        texts.append(await r.text())
                async with http.get(f"{base}/healthz") as r:
                    texts.append(await r.text())
        finally:
            up.terminate()
            await asyncio.wait_for(up.wait(), 30)
    texts.append(log.read_text())
    texts += [p.read_text(errors="replace") for p in data.rglob("*.log")]
    texts += [p.read_text(errors="replace") for p in data.rglob("*.out")]
    for text in texts:
        assert token not in text and token[3:] not in text

"""The secure defaults of `gateway cloud up`, tried as an attacker on the same network
would (issue 14's "Done when"): anonymous and plain-TCP clients refused; an agent's own
credentials publish its own telemetry and nothing else; `gateway cloud revoke` takes an
identity away from the running server, no restart. Plus the JWT encoder's own checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from gateway import jwt, permissions, process, subjects
from gateway.config import NatsSettings
from gateway.connect import CLOSE_ERRORS, connect
from gateway.errors import GatewayError
from gateway.security import CloudSecurity
from gateway.servers import free_port
from tests.helpers import eventually, gateway


@contextlib.asynccontextmanager
async def cloud_up(data: Path) -> AsyncIterator[str]:
    """`gateway cloud up` on its defaults; yields its NATS URL once it answers."""
    port = free_port()
    log = data.parent / "up.log"
    proc = process.spawn(
        [sys.executable, "-m", "app", "cloud", "up", "--data-dir", str(data),
         "--port", str(port), "--http-port", "0"],
        log,
    )  # fmt: skip
    try:

        async def ready() -> bool:
            return "cloud nats-server" in (log.read_text() if log.exists() else "")

        await eventually(ready, bool, timeout=60)
        yield f"nats://127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(process.stop, proc, 20)


class Errors:
    """What the server told a client (permission violations arrive asynchronously)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def on_error(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    async def count(self) -> int:
        return len(self.seen)


async def enrolled(data: Path, site: str, agent: str) -> Path:
    out = data.parent / f"{agent}.creds"
    code, _, err = await gateway(
        "cloud", "enroll", "--site", site, "--agent", agent, "--data-dir", str(data),
        "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert out.stat().st_mode & 0o777 == 0o600
    return out


async def agent_client(url: str, data: Path, creds: Path, agent: str, errors: Errors) -> NatsClient:
    settings = NatsSettings(url=url, ca_file=data / "tls" / "ca.pem", creds_file=creds)
    inbox = permissions.agent_inbox("s1", agent)
    return await connect(
        settings, agent, inbox_prefix=inbox, reconnect=False, error_cb=errors.on_error
    )


async def refused(nc: NatsClient, errors: Errors, action: str, what: str) -> None:
    """`action` was done; the server must answer with a permissions violation naming it."""
    before = len(errors.seen)
    await nc.flush()
    seen = await eventually(errors.count, lambda n: n > before, timeout=10)
    text = " ".join(errors.seen[before:seen]).lower()
    assert "permissions violation" in text and what.lower() in text, (action, text)


async def plain_tcp_is_refused(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        info = json.loads((await asyncio.wait_for(reader.readline(), 5)).split(b" ", 1)[1])
        assert info["tls_required"] is True
        writer.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(1024), 10)
        assert b"PONG" not in answer  # an -ERR, or the connection simply closed
    finally:
        writer.close()


async def test_cloud_up_defaults_refuse_strangers_confine_agents_and_revoke_live(
    tmp_path: Path,
) -> None:
    data = tmp_path / "cloud"
    async with cloud_up(data) as url:
        port = int(url.rsplit(":", 1)[1])
        await plain_tcp_is_refused(port)
        anonymous = NatsSettings(url=url, ca_file=data / "tls" / "ca.pem")
        with pytest.raises((NatsError, OSError)):
            await connect(anonymous, "anonymous", reconnect=False)

        creds_a, creds_b = await enrolled(data, "s1", "A"), await enrolled(data, "s1", "B")
        errors_a, errors_b = Errors(), Errors()
        a = await agent_client(url, data, creds_a, "A", errors_a)
        b = await agent_client(url, data, creds_b, "B", errors_b)
        try:
            ack = await a.jetstream().publish(subjects.telemetry("s1", "A"), b"x", timeout=5)
            assert ack.stream == subjects.TELEMETRY_STREAM

            for subject in (
                subjects.telemetry("s1", "B"),
                "agg.10s.s1.d.temp",
                subjects.kv_subject(subjects.LATEST_BUCKET, "10s.s1.d.temp"),
                subjects.kv_subject("DEPLOY_DESIRED", "s1.A"),
            ):
                await a.publish(subject, b"forged")
                await refused(a, errors_a, f"publish {subject}", f'publish to "{subject}"')
            await a.subscribe("telemetry.>")
            await refused(a, errors_a, "subscribe", 'subscription to "telemetry.>"')

            # The views role (the dashboard's fleet pages) may follow the heartbeats.
            views_errors = Errors()
            views = await connect(
                CloudSecurity.ensure(data).settings(url, role="views"), "views",
                reconnect=False, error_cb=views_errors.on_error,
            )  # fmt: skip
            try:
                heartbeats = await views.subscribe("status.*.*")
                await views.flush()
                await a.publish(subjects.status("s1", "A"), b"{}")
                msg = await heartbeats.next_msg(timeout=10)
                assert msg.subject == subjects.status("s1", "A")
                assert views_errors.seen == []
            finally:
                await views.close()

            code, _, err = await gateway(
                "cloud", "revoke", "--site", "s1", "--agent", "A", "--data-dir", str(data),
                "--nats", url,
            )  # fmt: skip
            assert code == 0, err
            await eventually(lambda: asyncio.sleep(0, a.is_closed), bool, timeout=15)
            with pytest.raises((NatsError, OSError)):
                await agent_client(url, data, creds_a, "A", Errors())
            ack = await b.jetstream().publish(subjects.telemetry("s1", "B"), b"y", timeout=5)
            assert ack.seq == 2  # B carried on, on the same server (the stream kept A's one)
        finally:
            for nc in (a, b):
                with contextlib.suppress(*CLOSE_ERRORS):
                    await nc.close()


def test_jwt_claims_are_signed_and_a_tampered_one_is_rejected() -> None:
    op, acct, user = jwt.KeyPair.operator(), jwt.KeyPair.account(), jwt.KeyPair.user()
    token = jwt.user_jwt(user.public, "agent.s1.A", acct, permissions.agent("s1", "A"))
    claims = jwt.decode(token)
    assert claims["iss"] == acct.public and claims["sub"] == user.public
    nats = claims["nats"]
    assert isinstance(nats, dict) and "telemetry.s1.A" in nats["pub"]["allow"]
    assert "telemetry.s1.B" not in nats["pub"]["allow"]
    head, _, sig = token.split(".")
    forged = jwt._b64(json.dumps({**claims, "sub": "UFORGED"}).encode())
    with pytest.raises(jwt.JwtError):
        jwt.decode(f"{head}.{forged}.{sig}")
    text = jwt.creds(token, user)
    assert jwt.creds_jwt(text) == token and user.seed.decode() in text
    assert user.seed.decode() not in repr(user)
    account = jwt.decode(jwt.account_jwt(acct, "GATEWAY", op, jwt.AccountOptions()))
    assert account["iss"] == op.public


def test_revoking_an_identity_never_issued_is_a_clear_error(tmp_path: Path) -> None:
    trust = CloudSecurity.ensure(tmp_path).trust
    with pytest.raises(GatewayError, match="no identity"):
        trust.revoke("agent.s1.nobody")

"""`/api/live` cleans up: one shared JetStream consumer per filter, gone within seconds of
the last client; a cap on clients (503 past it); invalid names are 400."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from cloud.streams import ensure_streams
from cloud.views.auth import ApiAuth, create_token
from cloud.views.http import http_api
from gateway import subjects
from gateway.config import StreamSettings
from tests.helpers import eventually

KV_STREAM = f"KV_{subjects.LATEST_BUCKET}"


def viewer(tmp_path: Path) -> tuple[ApiAuth, dict[str, str]]:
    """The API needs a token: one viewer's, and the header that sends it."""
    token = create_token(tmp_path / "tokens.jsonl", "viewer")[1]
    return ApiAuth.from_file(tmp_path / "tokens.jsonl"), {"Authorization": f"Bearer {token}"}


async def consumers(js: JetStreamContext) -> int:
    return int((await js.stream_info(KV_STREAM)).state.consumer_count)


async def test_500_clients_share_one_consumer_and_leave_none_behind(
    nc: NatsClient, js: JetStreamContext, tmp_path: Path
) -> None:
    await ensure_streams(js, StreamSettings())
    auth, headers = viewer(tmp_path)
    baseline = await consumers(js)
    async with (
        http_api(nc, 0, auth, live_clients=600) as port,
        aiohttp.ClientSession(
            f"http://127.0.0.1:{port}", connector=aiohttp.TCPConnector(limit=0), headers=headers
        ) as http,
    ):
        responses = await asyncio.gather(
            *(http.get("/api/live", params={"site": "s1"}) for _ in range(500))
        )
        try:
            assert all(r.status == 200 for r in responses)
            # Another filter gets its own feed; the 500 share one.
            async with http.get("/api/live", params={"site": "s2"}) as other:
                assert other.status == 200
                await eventually(lambda: consumers(js), lambda n: n == baseline + 2, timeout=10)
        finally:
            for r in responses:
                r.close()
        await eventually(lambda: consumers(js), lambda n: n == baseline, timeout=10)


async def test_the_cap_answers_503_and_bad_names_400(
    nc: NatsClient, js: JetStreamContext, tmp_path: Path
) -> None:
    await ensure_streams(js, StreamSettings())
    auth, headers = viewer(tmp_path)
    async with (
        http_api(nc, 0, auth, live_clients=3) as port,
        aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=headers) as http,
    ):
        held = [await http.get("/api/live", params={"device": f"d{i}"}) for i in range(3)]
        try:
            assert [r.status for r in held] == [200, 200, 200]
            async with http.get("/api/live") as r:
                assert r.status == 503
                assert "cap is 3" in (await r.json())["error"]
        finally:
            for r in held:
                r.close()

        async def admitted() -> int:
            async with http.get("/api/live", timeout=aiohttp.ClientTimeout(total=5)) as r:
                return r.status

        assert await eventually(admitted, lambda s: s == 200, timeout=10) == 200  # room again
        for params in ({"site": "a.b"}, {"device": "*"}, {"window": "x y"}):
            async with http.get("/api/live", params=params) as r:
                assert r.status == 400, params
                assert "invalid" in (await r.json())["error"]

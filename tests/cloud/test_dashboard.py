"""The dashboard in a real browser: Playwright driving Debian's Chromium headless against a
real cloud tier (nats-server, an aggregator worker, the HTTP API) fed by a real agent and
fleet (tests/chaos/rig.py). Skipped when Chromium is not installed (run.sh installs it as
root). With DASHBOARD_SCREENSHOTS=1 the screenshots go to docs/dashboard/ (committed).
Everything goes over HTTPS with a certificate from the test cloud's CA: Chromium trusts
that server key by its pin (`--ignore-certificate-errors-spki-list`), aiohttp by the CA.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import os
import shutil
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from cloud.httpd import HttpTls, http_tls
from cloud.records import WindowRecord
from cloud.streams import ensure_streams
from cloud.views.auth import ApiAuth, create_token
from cloud.views.http import http_api
from gateway import subjects
from gateway.config import StreamSettings
from gateway.deadletter import DeadLetterHeaders
from gateway.security import CloudSecurity
from tests.chaos.rig import AGENT, SITE, Rig, rig
from tests.helpers import cli_nats, eventually

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "dashboard"
XSS = b'{"device": "<script>window.__xss = 1</script>", "value": <img src=x onerror=alert(1)>}'


@dataclass
class Console:
    """Every console error and uncaught page error seen."""

    errors: list[str]

    def watch(self, page: Any) -> None:
        def on_console(msg: Any) -> None:
            if msg.type == "error":
                self.errors.append(msg.text)

        page.on("console", on_console)
        page.on("pageerror", lambda e: self.errors.append(str(e)))


def api_tls(tmp_path: Path) -> HttpTls:
    """The HTTPS certificate of the test cloud (the dir the rig's and `nc`'s server use)."""
    cloud_dir = tmp_path / "cloud-security"
    CloudSecurity.ensure(cloud_dir)
    tls = http_tls(cloud_dir)
    assert tls is not None
    return tls


def spki_pin(cert: Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)): how Chromium names a key to trust."""
    spki = (
        x509.load_pem_x509_certificate(cert.read_bytes())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def trusting(tmp_path: Path) -> aiohttp.ClientSession:
    ca = ssl.create_default_context(cafile=str(tmp_path / "cloud-security" / "tls" / "ca.pem"))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca))


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    pin = f"--ignore-certificate-errors-spki-list={spki_pin(api_tls(tmp_path).cert)}"
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, pin], headless=True)
        try:
            yield b
        finally:
            await b.close()


def shot_dir(tmp_path: Path) -> Path:
    return SHOTS if os.environ.get("DASHBOARD_SCREENSHOTS") else tmp_path


async def login(page: Any, base: str, token: str) -> None:
    await page.goto(f"{base}/dashboard/fleet")
    assert page.url.endswith("/dashboard/login")  # no session: to the login page
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/dashboard/")


async def cloud_tier(r: Rig, tmp_path: Path) -> tuple[ApiAuth, str]:
    r.children.start("aggregator", "cloud", "aggregate", *cli_nats(r.cloud, "aggregator"))
    tokens = tmp_path / "tokens.jsonl"
    token = create_token(tokens, "viewer")[1]
    return ApiAuth.from_file(tokens), token


async def test_dashboard_against_a_running_fleet(tmp_path: Path, browser: Any) -> None:
    shots = shot_dir(tmp_path)
    console = Console([])
    async with rig(tmp_path) as r:
        auth, token = await cloud_tier(r, tmp_path)
        r.start_agent()
        await r.wait_ready()
        r.start_fleet(devices=3, rate_hz=5.0)
        async with (
            http_api(r.nc, 0, auth, tls=api_tls(tmp_path)) as port,
            trusting(tmp_path) as http,
        ):
            base = f"https://127.0.0.1:{port}"
            bearer = {"Authorization": f"Bearer {token}"}
            # Without a token: pages go to the login page, the API answers 401.
            anon = await browser.new_page(bypass_csp=True)
            console.watch(anon)
            for path in ("/dashboard/", "/dashboard/fleet", "/dashboard/series"):
                await anon.goto(base + path)
                assert anon.url == f"{base}/dashboard/login", path
            for path in ("/api/fleet", "/api/series?site=a&device=b&metric=c", "/api/catalog"):
                async with http.get(base + path) as resp:
                    assert resp.status == 401, path
            await anon.screenshot(path=str(shots / "login.png"))
            await anon.close()

            # bypass_csp: the test's own probes are evaluated strings, which the page's policy
            # forbids; the dead-letter check below then holds even without that policy.
            ctx = await browser.new_context(
                viewport={"width": 1280, "height": 800}, bypass_csp=True
            )
            page = await ctx.new_page()
            console.watch(page)
            await login(page, base, token)

            # Fleet: the agent is listed, online.
            await page.goto(f"{base}/dashboard/fleet")
            cell = page.locator(f'[data-agent="{SITE}/{AGENT}"]')
            await cell.wait_for(timeout=15000)
            await page.wait_for_function(
                f"document.querySelector('[data-agent=\"{SITE}/{AGENT}\"]').textContent"
                " === 'online'",
                timeout=15000,
            )

            # Series: pick one from the catalog, live chart gains points while the fleet runs.
            async def catalog() -> list[dict[str, str]]:
                async with http.get(f"{base}/api/catalog", headers=bearer) as resp:
                    got: list[dict[str, str]] = await resp.json()
                    return got

            names = await eventually(catalog, lambda c: len(c) >= 3, timeout=30)
            s = names[0]

            async def windows() -> int:
                q = {**s, "points": "100"}
                async with http.get(f"{base}/api/series", params=q, headers=bearer) as resp:
                    return len((await resp.json()).get("times", [])) if resp.status == 200 else 0

            await eventually(windows, lambda n: n > 0, timeout=30, interval=0.5)
            await page.goto(f"{base}/dashboard/series")
            await page.wait_for_function("window.dashboard.catalogReady === true")
            await page.fill("#series-search", f"{s['device']} {s['metric']}")
            await page.locator("#series-results button").first.click()
            await page.select_option("#range", "15m")
            await page.wait_for_function(
                "window.dashboard.chartData && window.dashboard.chartData[0].length > 0",
                timeout=20000,
            )
            before = await page.evaluate("window.dashboard.chartData[0].length")
            await page.wait_for_function(
                f"window.dashboard.chartData[0].length > {before}"
                " && (window.dashboard.liveUpdates || 0) > 0",
                timeout=30000,
            )
            await page.screenshot(path=str(shots / "series.png"), full_page=True)
            await page.goto(f"{base}/dashboard/fleet")
            await page.screenshot(path=str(shots / "fleet.png"), full_page=True)
            await page.goto(f"{base}/dashboard/agent?site={SITE}&agent={AGENT}")
            await page.wait_for_function("window.dashboard.agent !== undefined", timeout=10000)
            await page.screenshot(path=str(shots / "agent.png"), full_page=True)
            sources = await page.evaluate("Object.keys(window.dashboard.agent.accounting.sources)")
            assert sources, "the agent page shows the per-source accounting"

            # A dead letter with markup in its payload is shown as text.
            hdrs = DeadLetterHeaders("invalid_json", "mqtt1", "expected value at 1:12").to_headers()
            await r.js.publish(f"dlq.{SITE}.{AGENT}", XSS, headers=hdrs)
            await page.goto(f"{base}/dashboard/deadletters")
            pre = page.locator("pre.preview", has_text="<script>")
            await pre.first.wait_for(timeout=15000)
            assert XSS.decode() in await pre.first.text_content()
            assert await page.locator("main script, main img").count() == 0
            assert await page.evaluate("window.__xss === undefined")
            await page.screenshot(path=str(shots / "deadletters.png"), full_page=True)

            await page.goto(f"{base}/dashboard/pipeline")
            await page.wait_for_function(
                "window.dashboard.pipeline && window.dashboard.pipeline.windows_per_s !== null",
                timeout=15000,
            )
            await page.screenshot(path=str(shots / "pipeline.png"), full_page=True)

            # The fleet stops; the chart of a fixed range draws what /api/series returns.
            await r.stop_fleet()
            await r.stop_agent()
            stopped = time.monotonic()
            await page.goto(f"{base}/dashboard/fleet")
            await page.wait_for_function(
                f"document.querySelector('[data-agent=\"{SITE}/{AGENT}\"]').textContent"
                " === 'offline'",
                timeout=20000,
            )
            offline_after = time.monotonic() - stopped
            assert offline_after < 15, offline_after
            await page.screenshot(path=str(shots / "fleet-offline.png"), full_page=True)

            await compare_chart_with_api(page, http, base, bearer, s)
            # Narrow (a phone): every page still renders without errors.
            await page.set_viewport_size({"width": 380, "height": 800})
            for name in ("series", "fleet", "deadletters", "pipeline"):
                await page.goto(f"{base}/dashboard/{name}")
                await page.wait_for_timeout(300)  # a rendering pause for the screenshot only
            await page.screenshot(path=str(shots / "pipeline-narrow.png"), full_page=True)
            await ctx.close()
    assert console.errors == []


async def compare_chart_with_api(
    page: Any, http: aiohttp.ClientSession, base: str, bearer: dict[str, str], s: dict[str, str]
) -> None:
    """The chart's data for a fixed past range equals the direct query's, column by column."""
    now_ms = int(time.time() * 1000)
    from_ms, to_ms = now_ms - 10 * 60_000, now_ms - 1000
    await page.goto(f"{base}/dashboard/series")
    await page.wait_for_function("window.dashboard.catalogReady === true")
    await page.evaluate(f"window.dashboard.add({s['site']!r}, {s['device']!r}, {s['metric']!r})")
    await page.evaluate(f"window.dashboard.setRange({from_ms}, {to_ms})")
    await page.wait_for_function("window.dashboard.lastLoadMs !== undefined", timeout=10000)
    points = await page.evaluate("window.dashboard.series.result[0].points")
    chart = await page.evaluate("window.dashboard.chartData")
    query = {
        **s,
        "from": str(from_ms * 10**6),
        "to": str(to_ms * 10**6),
        "points": str(points),
    }
    async with http.get(f"{base}/api/series", params=query, headers=bearer) as resp:
        direct = await resp.json()
    assert chart[0] == [t / 1e9 for t in direct["times"]]
    assert len(direct["times"]) > 0
    for i, key in enumerate(("min", "max", "mean", "p95"), start=1):
        assert chart[i] == direct[key], key


def record(device: str, window: str, start_ns: int, width_s: int, value: float) -> WindowRecord:
    return WindowRecord(
        site="perf", device=device, metric="temp", unit="Cel", window=window,
        start_ns=start_ns, end_ns=start_ns + width_s * 10**9, count=10,
        min=value - 1, max=value + 1, sum=value * 10, mean=value, stddev=0.5,
        p50=value, p95=value + 0.8, first=value, last=value, closed=True,
    )  # fmt: skip


async def publish_all(js: JetStreamContext, items: list[tuple[str, bytes]]) -> None:
    for i in range(0, len(items), 500):
        await asyncio.gather(*(js.publish(subj, data) for subj, data in items[i : i + 500]))


async def seed(js: JetStreamContext, now_ns: int) -> None:
    """10,000 series in the catalog; 30 days of 1h and 1d windows of dev-00000; 15 minutes
    of 10 s windows of dev-00000 .. dev-00019 (the live chart's series)."""
    hour, day = 3600 * 10**9, 86400 * 10**9
    items = [
        (f"$KV.{subjects.LATEST_BUCKET}.1h.perf.dev-{i:05d}.temp", b"{}") for i in range(10_000)
    ]
    start = (now_ns - 30 * day) // hour * hour
    for k in range(30 * 24):
        r = record("dev-00000", "1h", start + k * hour, 3600, 20 + math.sin(k / 10))
        items.append((r.subject(), r.to_json()))
    for k in range(31):
        r = record("dev-00000", "1d", (now_ns - 30 * day) // day * day + k * day, 86400, 20.0)
        items.append((r.subject(), r.to_json()))
    ten = 10 * 10**9
    for d in range(20):
        for k in range(90):
            r = record(f"dev-{d:05d}", "10s", (now_ns - 900 * 10**9) // ten * ten + k * ten, 10, d)
            items.append((r.subject(), r.to_json()))
    await publish_all(js, items)


@pytest.mark.slow
async def test_dashboard_performance(tmp_path: Path, nc: NatsClient, browser: Any) -> None:
    """The figures docs/benchmarks.md records: picker search with 10,000 series, a 30-day
    chart (request to drawn) and the main thread's load of a 20-series live chart."""
    js = nc.jetstream()
    await ensure_streams(js, StreamSettings())
    now_ns = time.time_ns()
    await seed(js, now_ns)
    tokens = tmp_path / "tokens.jsonl"
    token = create_token(tokens, "viewer")[1]
    async with http_api(nc, 0, ApiAuth.from_file(tokens), tls=api_tls(tmp_path)) as port:
        base = f"https://127.0.0.1:{port}"
        ctx = await browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
        page = await ctx.new_page()
        await login(page, base, token)
        await page.goto(f"{base}/dashboard/series")
        await page.wait_for_function("window.dashboard.catalogReady === true", timeout=30000)
        assert await page.evaluate("window.dashboard.series.catalog.length") == 10_000
        search_ms = []
        for text in ("dev-0999", "perf 42", "temp", "dev-00007 temp", "nothing-like-this"):
            search_ms.append(
                await page.evaluate(
                    """(text) => { const box = document.getElementById('series-search');
                    const t0 = performance.now(); box.value = text;
                    box.dispatchEvent(new Event('input'));
                    document.getElementById('series-results').getBoundingClientRect();
                    return performance.now() - t0; }""",
                    text,
                )
            )
        month_ms = []
        for _ in range(3):
            await page.evaluate("window.dashboard.series.chosen.length = 0")
            await page.evaluate("window.dashboard.add('perf', 'dev-00000', 'temp')")
            await page.evaluate("delete window.dashboard.lastLoadMs")
            await page.evaluate(f"window.dashboard.setRange({now_ns // 10**6 - 30 * 86400_000}, 0)")
            await page.wait_for_function("window.dashboard.lastLoadMs !== undefined")
            month_ms.append(await page.evaluate("window.dashboard.lastLoadMs"))
        assert await page.evaluate("window.dashboard.series.result[0].window") == "1h"

        await page.goto(f"{base}/dashboard/series")
        await page.wait_for_function("window.dashboard.catalogReady === true", timeout=30000)
        for d in range(20):
            await page.evaluate(f"window.dashboard.add('perf', 'dev-{d:05d}', 'temp')")
        await page.select_option("#range", "15m")
        await page.wait_for_function(
            "window.dashboard.series.result.length === 20 && window.dashboard.series.es",
            timeout=20000,
        )
        cdp = await ctx.new_cdp_session(page)
        await cdp.send("Performance.enable")
        busy = await live_load(js, cdp, seconds=20)
        updates = await page.evaluate("window.dashboard.liveUpdates || 0")
        await ctx.close()
    print(
        f"\nDASHBOARD search_ms max={max(search_ms):.1f} all={[round(x, 1) for x in search_ms]}"
        f" month_chart_ms={[round(x) for x in month_ms]} live_busy={busy:.1%} updates={updates}"
    )
    assert max(search_ms) < 100
    assert min(month_ms) < 1000
    assert updates >= 20 * 15
    assert busy < 0.20


async def live_load(js: JetStreamContext, cdp: Any, seconds: int) -> float:
    """Put one update per second for each of the 20 series into AGG_LATEST (what the
    aggregator does for an open window); the share of wall time the renderer's main thread
    spent in tasks (CDP Performance.getMetrics TaskDuration) over that time."""

    async def task_s() -> float:
        got = await cdp.send("Performance.getMetrics")
        return float(next(m["value"] for m in got["metrics"] if m["name"] == "TaskDuration"))

    kv = await js.key_value(subjects.LATEST_BUCKET)
    t0, busy0 = time.monotonic(), await task_s()
    for tick in range(seconds):
        start = time.time_ns() // (10 * 10**9) * (10 * 10**9)
        for d in range(20):
            r = record(f"dev-{d:05d}", "10s", start, 10, d + tick / 10)
            await kv.put(r.latest_key(), r.to_json())
        await asyncio.sleep(max(0.0, t0 + tick + 1 - time.monotonic()))  # 1 update/s: pacing
    return (await task_s() - busy0) / (time.monotonic() - t0)

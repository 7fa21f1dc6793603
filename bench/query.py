"""History queries against a large AGG: our indexed reads vs an ordered consumer reading
exactly the answering records, at about 1 M and at 10 M records, in one run.

    python -m bench.query [--series 1000] [--hours 26] [--days 30]

Fills AGG as the aggregator would (in event-time order, with the `IndexBounds` headers):
`--series` series of one site with `--days` of 1 h and 1 d windows, then `--hours` of 10 s
windows (the 1 h windows of those hours interleaved where they close). With the defaults
that is 1000 x (9360 + 720 + 30) = 10.1 M records. Measures, once the stream holds about
1 M records (and at least an hour of 10 s windows) and again at the end:

- one series over its last hour (10 s windows, 360 records),
- every series of the site over the last hour (360,000 records), at the end only,
- one series over 30 days with `points=500` (720 hourly windows), at the end only,

each as `cloud.views.query` answers it and as a baseline: an ephemeral consumer with the
same subject filter that starts at the first answering record and reads exactly the
answering records (decoding each, as the query does); the best of three runs of each.
Prints JSON with times and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from nats.js.client import JetStreamContext

from cloud.records import IndexBounds, WindowRecord
from cloud.streams import ensure_streams
from cloud.views.query import Plan, Selector, locate, read, series
from gateway import subjects
from gateway.config import StreamSettings
from gateway.connect import connect
from gateway.security import CloudSecurity
from gateway.servers import NatsServer

S = 10**9
HOUR, DAY = 3600 * S, 86400 * S
LATENESS = 2 * S
END = (1_700_000_000 * S) // DAY * DAY  # the newest data ends on a day boundary


def record(device: str, window: str, width: int, start: int) -> WindowRecord:
    return WindowRecord(
        site="s1", device=device, metric="temp", unit="Cel", window=window,
        start_ns=start, end_ns=start + width, count=10, min=19.5, max=22.5, sum=210.0,
        mean=21.0, stddev=0.9, p50=21.0, p95=22.3, first=20.0, last=21.5, closed=True,
    )  # fmt: skip


class Filler:
    def __init__(self, js: JetStreamContext, series: int) -> None:
        self.js = js
        self.devices = [f"d{i:04d}" for i in range(series)]
        self.published = 0
        self.elapsed = 0.0

    async def round(self, window: str, width: int, start: int) -> None:
        """One aggregation round: this window of every series, as the worker emits it."""
        t = time.perf_counter()
        bounds = IndexBounds(start - width - LATENESS, start + width).to_headers()
        for device in self.devices:
            r = record(device, window, width, start)
            headers = {"Nats-Msg-Id": r.msg_id(), **bounds}
            await self.js.publish_async(r.subject(), r.to_json(), headers=headers)
        self.published += len(self.devices)
        self.elapsed += time.perf_counter() - t

    async def flush(self) -> None:
        t = time.perf_counter()
        await self.js.publish_async_completed()
        self.elapsed += time.perf_counter() - t


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = await fn()
    return time.perf_counter() - t, out


async def baseline(js: JetStreamContext, sel: Selector, want: int) -> float:
    """An ephemeral consumer on the same filter from the first answering record, reading
    exactly `want` records: the cost of the answer itself."""
    info = await js.stream_info(subjects.AGG_STREAM, subjects_filter=sel.subject())
    first = None
    for subject in sorted(info.state.subjects or {}):
        seq = await _first_answering(js, subject, sel, info.state.first_seq, info.state.last_seq)
        first = seq if first is None else min(first, seq)
    assert first is not None
    plan = Plan(first, info.state.last_seq, tuple(info.state.subjects or {}), 0)
    t = time.perf_counter()
    got = await read(js, Selector(sel.site, sel.device, sel.metric, sel.window), plan, limit=want)
    elapsed = time.perf_counter() - t
    assert len(got) == want, (len(got), want)
    return elapsed


async def _first_answering(
    js: JetStreamContext, subject: str, sel: Selector, lo: int, hi: int
) -> int:
    """Not timed: where the baseline starts (the fill is in start order per subject)."""
    while lo < hi:
        mid = (lo + hi) // 2
        msg = await js.get_msg(subjects.AGG_STREAM, seq=mid, subject=subject, next=True)
        assert msg.data is not None and msg.seq is not None
        if WindowRecord.from_json(msg.data).start_ns < (sel.start_ns or 0):
            lo = msg.seq + 1
        else:
            hi = mid
    return lo


async def ours(js: JetStreamContext, sel: Selector) -> tuple[float, int, int, int]:
    t = time.perf_counter()
    plan = await locate(js, sel)
    counted = [0]
    got = await read(js, sel, plan, counted=counted)
    return time.perf_counter() - t, len(got), counted[0], plan.gets


REPEAT = 3  # best of: the machine is shared, a single run is noisy


async def measure(js: JetStreamContext, name: str, sel: Selector, out: dict[str, Any]) -> None:
    runs = [await ours(js, sel) for _ in range(REPEAT)]
    elapsed, n, scanned, gets = min(runs)
    base = min([await baseline(js, sel, n) for _ in range(REPEAT)])
    out[name] = {
        "records": n, "read": scanned, "direct_gets": gets, "ours_s": round(elapsed, 4),
        "baseline_s": round(base, 4), "ours_vs_baseline": round(elapsed / base, 2),
    }  # fmt: skip
    print(name, out[name], flush=True)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        security = CloudSecurity.ensure(Path(tmp) / "security")  # TLS + JWT: the defaults
        async with NatsServer(Path(tmp), name="bench", security=security) as server:
            nc = await connect(server.client(), "bench")
            js = nc.jetstream(publish_async_max_pending=20_000)
            await ensure_streams(js, StreamSettings())
            fill = Filler(js, args.series)
            fine_start = END - args.hours * HOUR
            for start in range(END - args.days * DAY, fine_start, HOUR):
                await fill.round("1h", HOUR, start)
                if (start + HOUR) % DAY == 0:
                    await fill.round("1d", DAY, start + HOUR - DAY)
            one = Selector("s1", fill.devices[0], "temp", "10s")
            measured_small = False
            for start in range(fine_start, END, 10 * S):
                await fill.round("10s", 10 * S, start)
                end = start + 10 * S
                if end % HOUR == 0:
                    await fill.round("1h", HOUR, end - HOUR)
                if end % DAY == 0:
                    await fill.round("1d", DAY, end - DAY)
                if not measured_small and fill.published >= args.small and end - fine_start >= HOUR:
                    await fill.flush()
                    out["small_records"] = fill.published
                    await measure(js, "one_series_last_hour_small",
                                  _last_hour(one, end), out)  # fmt: skip
                    measured_small = True
            await fill.flush()
            out["records"] = fill.published
            out["fill_s"] = round(fill.elapsed, 1)
            out["fill_per_s"] = round(fill.published / fill.elapsed)
            print("filled", fill.published, "in", out["fill_s"], "s", flush=True)
            await measure(js, "one_series_last_hour", _last_hour(one, END), out)
            site = Selector("s1", None, None, "10s")
            await measure(js, "site_last_hour", _last_hour(site, END), out)
            charts = [
                await timed(
                    lambda: series(js, "s1", fill.devices[0], "temp", END - 30 * DAY, END, 500)
                )
                for _ in range(REPEAT)
            ]
            t, chart = min(charts, key=lambda c: c[0])
            sel = Selector("s1", fill.devices[0], "temp", chart.window, END - 30 * DAY, END)
            base = min([await baseline(js, sel, len(chart.times)) for _ in range(REPEAT)])
            out["one_series_30_days_points_500"] = {
                "window": chart.window, "records": len(chart.times), "read": chart.read,
                "ours_s": round(t, 4), "baseline_s": round(base, 4),
                "ours_vs_baseline": round(t / base, 2),
            }  # fmt: skip
            small = out["one_series_last_hour_small"]["ours_s"]
            out["one_series_last_hour_big_vs_small"] = round(
                out["one_series_last_hour"]["ours_s"] / small, 2
            )
            await nc.close()
    return out


def _last_hour(sel: Selector, end: int) -> Selector:
    return Selector(sel.site, sel.device, sel.metric, sel.window, end - HOUR, end)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--hours", type=int, default=26, help="of 10 s windows")
    p.add_argument("--days", type=int, default=30, help="of 1 h and 1 d windows")
    p.add_argument("--small", type=int, default=1_000_000, help="records at the first measure")
    result = asyncio.run(main(p.parse_args()))
    print(orjson.dumps(result).decode())

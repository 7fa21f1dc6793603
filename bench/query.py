"""History queries against a large AGG: our indexed reads vs an ordered consumer reading
exactly the answering records, at about 1 M and at 10 M records, in one run.

    python -m bench.query [--series 1000] [--hours 26] [--days 30] [--keep DIR]

Fills AGG as the aggregator would (in event-time order, with the `IndexBounds` headers):
`--series` series of one site with `--days` of 1 h and 1 d windows, then `--hours` of 10 s
windows (the 1 h windows of those hours interleaved where they close). With the defaults
that is 1000 x (9360 + 720 + 30) = 10.1 M records (the big store). A second, small store
is the same fill with just enough hours of 10 s windows for `--small` records (1.1 M).
Measures, on the big store:

- one series over its last hour (10 s windows, 360 records), and the same on the small
  store (the cost must not grow with history),
- every series of the site over the last hour (360,000 records),
- one series over 30 days with `points=500` (720 hourly windows),

each as `cloud.views.query` answers it and as a baseline: an ephemeral consumer with the
same subject filter that starts at the first answering record and reads exactly the
answering records (decoding each, as the query does). Rounds alternate ours and the
baseline; each time is the median of `--rounds`. Prints JSON with times and ratios.

`--keep DIR` keeps both stores under DIR (server, TLS and credentials included) and reuses
a store whose fill completed with the same parameters, so the 10 M fill (8 minutes here)
is made once; `--fill-only` makes the stores and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cloud.records import IndexBounds, WindowRecord
from cloud.streams import ensure_streams
from cloud.views.query import Plan, Selector, locate, read, series
from cloud.windows import label_seconds
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


@dataclass(frozen=True, slots=True)
class Answer:
    """One timed run of ours: its time and what it cost."""

    elapsed: float
    records: int
    read: int  # AGG records the consumer delivered
    gets: int  # direct gets (and STREAM.INFO calls for a chart) spent locating
    window: str


async def ours(js: JetStreamContext, sel: Selector) -> Answer:
    t = time.perf_counter()
    plan = await locate(js, sel)
    counted = [0]
    got = await read(js, sel, plan, counted=counted)
    return Answer(time.perf_counter() - t, len(got), counted[0], plan.gets, sel.window or "")


async def ours_chart(js: JetStreamContext, sel: Selector, points: int) -> Answer:
    assert sel.site and sel.device and sel.metric
    t = time.perf_counter()
    chart = await series(js, sel.site, sel.device, sel.metric, sel.start_ns, sel.end_ns, points)
    return Answer(time.perf_counter() - t, len(chart.times), chart.read, 0, chart.window)


async def measure(
    name: str,
    run_ours: Callable[[], Awaitable[Answer]],
    run_base: Callable[[Answer], Awaitable[float]],
    rounds: int,
    out: dict[str, Any],
) -> None:
    """Alternate ours and the baseline (the machine is shared: load drifts over a run) and
    report the median of each."""
    answers: list[Answer] = []
    bases: list[float] = []
    for _ in range(rounds):
        answers.append(await run_ours())
        bases.append(await run_base(answers[-1]))
    mid = statistics.median(a.elapsed for a in answers)
    base = statistics.median(bases)
    last = answers[-1]
    out[name] = {
        "window": last.window, "records": last.records, "read": last.read,
        "direct_gets": last.gets, "ours_s": round(mid, 4), "baseline_s": round(base, 4),
        "ours_vs_baseline": round(mid / base, 2), "rounds": rounds,
    }  # fmt: skip
    print(name, out[name], flush=True)


async def measure_query(
    js: JetStreamContext, name: str, sel: Selector, rounds: int, out: dict[str, Any]
) -> None:
    async def base(answer: Answer) -> float:
        return await baseline(js, sel, answer.records)

    await measure(name, lambda: ours(js, sel), base, rounds, out)


async def measure_chart(
    js: JetStreamContext, name: str, sel: Selector, points: int, rounds: int, out: dict[str, Any]
) -> None:
    async def base(answer: Answer) -> float:
        width = label_seconds(answer.window) * S
        start = (sel.start_ns or 0) // width * width
        chosen = Selector(sel.site, sel.device, sel.metric, answer.window, start, sel.end_ns)
        return await baseline(js, chosen, answer.records)

    await measure(name, lambda: ours_chart(js, sel, points), base, rounds, out)


@dataclass(frozen=True, slots=True)
class Shape:
    """What a store holds: the fill's parameters."""

    series: int
    hours: int  # of 10 s windows, at the end
    days: int  # of 1 h and 1 d windows

    def label(self) -> str:
        return f"s{self.series}-h{self.hours}-d{self.days}"


async def fill(js: JetStreamContext, shape: Shape) -> Filler:
    filler = Filler(js, shape.series)
    fine_start = END - shape.hours * HOUR
    for start in range(END - shape.days * DAY, fine_start, HOUR):
        await filler.round("1h", HOUR, start)
        if (start + HOUR) % DAY == 0:
            await filler.round("1d", DAY, start + HOUR - DAY)
    for start in range(fine_start, END, 10 * S):
        await filler.round("10s", 10 * S, start)
        end = start + 10 * S
        if end % HOUR == 0:
            await filler.round("1h", HOUR, end - HOUR)
        if end % DAY == 0:
            await filler.round("1d", DAY, end - DAY)
    await filler.flush()
    return filler


@contextlib.asynccontextmanager
async def store(root: Path, shape: Shape) -> AsyncIterator[tuple[JetStreamContext, dict[str, Any]]]:
    """A server holding `shape`, filled unless `root` has a completed fill of it."""
    where = root / shape.label()
    marker = where / "filled.json"
    security = CloudSecurity.ensure(where / "security")  # TLS + JWT: the defaults
    async with NatsServer(where, name="bench", security=security) as server:
        nc = await connect(server.client(), "bench")
        try:
            js = nc.jetstream(publish_async_max_pending=20_000)
            if marker.exists():
                stats = orjson.loads(marker.read_bytes())
                print("reusing", where, stats, flush=True)
            else:
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(subjects.AGG_STREAM)  # an unfinished fill
                await ensure_streams(js, StreamSettings())
                filler = await fill(js, shape)
                stats = {
                    "records": filler.published, "fill_s": round(filler.elapsed, 1),
                    "fill_per_s": round(filler.published / filler.elapsed),
                }  # fmt: skip
                marker.write_bytes(orjson.dumps(stats))
                print("filled", where, stats, flush=True)
            yield js, stats
        finally:
            await nc.close()


def small_shape(big: Shape, records: int) -> Shape:
    """The big fill cut at the first hour of 10 s windows that reaches `records`."""
    coarse = big.series * big.days * 25
    per_hour = big.series * (360 + 1)
    hours = max(1, -(-(records - coarse) // per_hour))
    return Shape(big.series, min(hours, big.hours), big.days)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    big = Shape(args.series, args.hours, args.days)
    small = small_shape(big, args.small)
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        one = Selector("s1", "d0000", "temp", "10s")
        async with store(root, big) as (js, stats):
            out.update(stats)
            if args.fill_only:
                return out
            await measure_query(js, "one_series_last_hour", _last_hour(one, END), args.rounds, out)
            site = Selector("s1", None, None, "10s")
            await measure_query(js, "site_last_hour", _last_hour(site, END), args.rounds, out)
            month = Selector("s1", "d0000", "temp", None, END - 30 * DAY, END)
            await measure_chart(js, "one_series_30_days_points_500", month, 500, args.rounds, out)
        async with store(root, small) as (js, stats):
            out["small_records"] = stats["records"]
            await measure_query(
                js, "one_series_last_hour_small", _last_hour(one, END), args.rounds, out
            )
    out["one_series_last_hour_big_vs_small"] = round(
        out["one_series_last_hour"]["ours_s"] / out["one_series_last_hour_small"]["ours_s"], 2
    )
    return out


def _last_hour(sel: Selector, end: int) -> Selector:
    return Selector(sel.site, sel.device, sel.metric, sel.window, end - HOUR, end)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--hours", type=int, default=26, help="of 10 s windows")
    p.add_argument("--days", type=int, default=30, help="of 1 h and 1 d windows")
    p.add_argument("--small", type=int, default=1_000_000, help="records of the small store")
    p.add_argument("--rounds", type=int, default=5, help="median of")
    p.add_argument("--keep", type=Path, help="keep (and reuse) the filled stores here")
    p.add_argument("--fill-only", action="store_true", help="make the stores, measure nothing")
    result = asyncio.run(main(p.parse_args()))
    print(orjson.dumps(result).decode())

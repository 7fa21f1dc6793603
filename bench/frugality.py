"""Frugality at real rates: CPU, disk writes and memory of the agent, from /proc.

    python -m bench.frugality [--duration 30] [--warmup 5] [--rounds 3]
                              [--scenarios json-1k,json-10k,senml] [--durability normal,full]
                              [--json]

A live fleet publishes at a fixed rate (QoS 1) to a real Mosquitto; a real agent
(`gateway edge run`, its own process, default config apart from `durability`) forwards to
a real nats-server cloud on the secure defaults (TLS + JWT creds). Side by side in the same
run, a bare paho subscriber (QoS 1, its own process, counts messages only) receives the
same messages. Both processes are measured the same way from /proc over the same window
after a warm-up: CPU time (utime + stime of /proc/PID/stat), `write_bytes` of
/proc/PID/io (bytes the process caused to be written to storage; sockets excluded), peak
(VmHWM) and final (VmRSS) resident memory.

Scenarios (each about 1,000 messages/s):
  json-1k   1,000 devices x 1 Hz, one JSON reading per message
  json-10k  10,000 devices x 0.1 Hz, one JSON reading per message
  senml     1,000 devices x 0.1 Hz, SenML packs of 10 readings (1,000 readings/s)

Encoded size of a reading: the batch payloads the agent published to TELEMETRY over the
run, divided by their readings. Each figure is the median over the rounds; a ratio is
taken within a round (same moment, same load), then its median.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from bench.frugality_peers import SCENARIOS, SITE, TOPIC_ROOT, Scenario
from cloud.streams import ensure_streams
from edge import accounting
from edge.supervisor.render import dump_toml
from gateway import codec, config, process, subjects
from gateway.config import AgentConfig, StreamSettings
from gateway.connect import connect
from gateway.pki import write_private
from gateway.security import CloudSecurity
from gateway.servers import NatsServer
from tests.mosquitto import Mosquitto

_CLK = os.sysconf("SC_CLK_TCK")


# -- /proc -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProcSample:
    cpu_s: float
    write_bytes: int
    rss_mib: float
    peak_rss_mib: float


def proc_sample(pid: int) -> ProcSample:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK  # utime, stime (fields 14, 15)
    with open(f"/proc/{pid}/io") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    status: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                status[key] = int(rest.split()[0]) / 1024
    return ProcSample(cpu, int(io["write_bytes"]), status["VmRSS"], status["VmHWM"])


# -- the measured run ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Result:
    scenario: str
    durability: str
    round: int
    window_s: float
    agent_messages: int
    agent_readings: int
    bare_messages: int
    agent_cpu_us_per_msg: float
    bare_cpu_us_per_msg: float
    cpu_ratio: float
    agent_disk_bytes_per_reading: float
    encoded_bytes_per_reading: float
    disk_vs_encoded: float
    agent_rss_mib: float
    agent_peak_rss_mib: float
    bare_rss_mib: float
    bare_peak_rss_mib: float


class Bare:
    """The bare subscriber's process, asked for its count over a pipe."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.frugality_peers", "bare", "--port", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def count(self) -> int:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write("?\n")
        stdin.flush()
        return int(self._line())

    def stop(self) -> None:
        process.stop(self.proc)  # type: ignore[arg-type]


def agent_toml(tmp: Path, name: str, port: int, cloud: NatsServer, durability: str) -> Path:
    """Agent `name` with its own credentials (the secure defaults), otherwise defaults."""
    assert cloud.security is not None
    creds = tmp / f"{name}.creds"
    write_private(creds, cloud.security.trust.enroll(SITE, name).encode())
    nats = cloud.client().model_copy(update={"creds_file": creds})
    cfg = config.parse(
        AgentConfig,
        {
            "site": SITE,
            "agent": name,
            "data_dir": str(tmp / name),
            "nats": nats.model_dump(mode="json"),
            "sources": [{"url": f"mqtt://127.0.0.1:{port}", "topics": [f"{TOPIC_ROOT}/#"],
                         "format": "json"}],
            "buffer": {"durability": durability},
        },
    )  # fmt: skip
    path = tmp / f"{name}.toml"
    path.write_text(dump_toml(cfg.model_dump(mode="json", exclude_none=True)))
    return path


def senml_toml(path: Path) -> None:
    path.write_text(path.read_text().replace('format = "json"', 'format = "senml"'))


@contextmanager
def child(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = process.spawn([sys.executable, "-m", *args], log)
    try:
        yield proc
    finally:
        process.stop(proc)


def received(buffer: Path) -> int:
    """Readings the agent has made durable (its accounting's `received`)."""
    if not buffer.exists():
        return 0
    db = accounting.open_readonly(buffer)
    try:
        return sum(a.received for a in accounting.accounts(db).values())
    finally:
        db.close()


def _log_text(log: Path) -> str:
    return log.read_text() if log.exists() else ""


async def wait_ready(log: Path, name: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while f"agent {SITE}/{name} ready" not in _log_text(log):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"agent {name} not ready:\n{process.tail(log)}")
        await asyncio.sleep(0.1)


async def encoded_size(cloud: NatsServer, name: str) -> tuple[int, int]:
    """Payload bytes and readings of the batches agent `name` published to TELEMETRY."""
    nc = await connect(cloud.client(), "frugal-reader")
    js = nc.jetstream()
    sub = await js.subscribe(subjects.telemetry(SITE, name), ordered_consumer=True)
    info = await js.stream_info(subjects.TELEMETRY_STREAM)
    size = readings = 0
    try:
        while True:
            msg = await sub.next_msg(timeout=2)
            size += len(msg.data)
            readings += len(codec.decode(msg.data))
            if msg.metadata.sequence.stream >= info.state.last_seq:
                break
    except TimeoutError:
        pass
    finally:
        await nc.close()
    return size, readings


async def one_run(
    args: argparse.Namespace,
    tmp: Path,
    mosq: Mosquitto,
    cloud: NatsServer,
    s: Scenario,
    durability: str,
    r: int,
) -> Result:
    name = f"{s.name.replace('-', '')}{durability}{r}"
    toml = agent_toml(tmp, name, mosq.port, cloud, durability)
    if s.pack > 1:
        senml_toml(toml)
    log = tmp / f"{name}.log"
    buffer = tmp / name / "buffer.sqlite3"
    bare = await asyncio.to_thread(Bare, mosq.port)
    try:
        with child(["app", "edge", "run", "--config", str(toml)], log) as agent:
            await wait_ready(log, name, agent)
            with child(
                ["bench.frugality_peers", "publish", "--port", str(mosq.port),
                 "--scenario", s.name], tmp / f"{name}-fleet.log",
            ):  # fmt: skip
                await asyncio.sleep(args.warmup)
                a0, b0 = proc_sample(agent.pid), proc_sample(bare.proc.pid)
                n0, m0, t0 = received(buffer), bare.count(), time.monotonic()
                await asyncio.sleep(args.duration)
                a1, b1 = proc_sample(agent.pid), proc_sample(bare.proc.pid)
                n1, m1, t1 = received(buffer), bare.count(), time.monotonic()
    finally:
        await asyncio.to_thread(bare.stop)
    size, published = await encoded_size(cloud, name)
    readings, bare_msgs = n1 - n0, m1 - m0
    msgs = readings // s.pack
    agent_us = (a1.cpu_s - a0.cpu_s) / max(msgs, 1) * 1e6
    bare_us = (b1.cpu_s - b0.cpu_s) / max(bare_msgs, 1) * 1e6
    disk = (a1.write_bytes - a0.write_bytes) / max(readings, 1)
    encoded = size / max(published, 1)
    res = Result(
        s.name, durability, r, round(t1 - t0, 2), msgs, readings, bare_msgs,
        round(agent_us, 1), round(bare_us, 1), round(agent_us / bare_us, 3),
        round(disk, 1), round(encoded, 1), round(disk / encoded, 2),
        a1.rss_mib, a1.peak_rss_mib, b1.rss_mib, b1.peak_rss_mib,
    )  # fmt: skip
    print(
        f"{s.name:9} {durability:6} round {r}: agent {agent_us:6.1f} us/msg, bare "
        f"{bare_us:6.1f} (x{res.cpu_ratio:.2f}); disk {disk:6.1f} B/reading "
        f"({res.disk_vs_encoded:.2f} x {encoded:.1f} B encoded); RSS {a1.rss_mib:.1f} MiB "
        f"(peak {a1.peak_rss_mib:.1f}), bare {b1.rss_mib:.1f}",
        file=sys.stderr,
    )
    return res


async def measure(args: argparse.Namespace, tmp: Path) -> list[Result]:
    mosq = Mosquitto(tmp / "mosquitto", max_inflight=1000)
    security = CloudSecurity.ensure(tmp / "cloud-security")  # TLS + JWT: the defaults
    cloud = NatsServer(tmp / "cloud", name="cloud", security=security)
    await mosq.start()
    await cloud.start()
    results: list[Result] = []
    try:
        nc = await connect(cloud.client(), "bench")
        await ensure_streams(nc.jetstream(), StreamSettings())
        await nc.close()
        for r in range(args.rounds):  # rounds interleave: a burst of load hits every case
            for name in args.scenarios:
                for durability in args.durability:
                    results.append(
                        await one_run(args, tmp, mosq, cloud, SCENARIOS[name], durability, r)
                    )
    finally:
        await cloud.stop()
        await mosq.stop()
    return results


_MEDIANS = (
    "agent_cpu_us_per_msg", "bare_cpu_us_per_msg", "cpu_ratio", "agent_disk_bytes_per_reading",
    "encoded_bytes_per_reading", "disk_vs_encoded", "agent_rss_mib", "agent_peak_rss_mib",
    "bare_rss_mib", "bare_peak_rss_mib",
)  # fmt: skip


def summarise(results: list[Result]) -> dict[str, dict[str, float]]:
    """`scenario/durability` -> the median of each figure over the rounds."""
    cases: dict[str, list[Result]] = {}
    for res in results:
        cases.setdefault(f"{res.scenario}/{res.durability}", []).append(res)
    return {
        case: {k: round(statistics.median(getattr(x, k) for x in rs), 2) for k in _MEDIANS}
        for case, rs in cases.items()
    }


def table(summary: dict[str, dict[str, float]]) -> str:
    head = (
        f"{'case':16}{'agent us/msg':>13}{'bare us/msg':>12}{'ratio':>7}{'disk B/rdg':>11}"
        f"{'enc B/rdg':>10}{'disk/enc':>9}{'RSS MiB':>8}{'peak':>7}{'bare RSS':>9}"
    )
    rows = [head]
    for case, m in summary.items():
        rows.append(
            f"{case:16}{m['agent_cpu_us_per_msg']:>13.1f}{m['bare_cpu_us_per_msg']:>12.1f}"
            f"{m['cpu_ratio']:>7.2f}{m['agent_disk_bytes_per_reading']:>11.1f}"
            f"{m['encoded_bytes_per_reading']:>10.1f}{m['disk_vs_encoded']:>9.2f}"
            f"{m['agent_rss_mib']:>8.1f}{m['agent_peak_rss_mib']:>7.1f}{m['bare_rss_mib']:>9.1f}"
        )
    return "\n".join(rows)


def _csv(choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        items = [x for x in text.split(",") if x]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}, not {text!r}")
        return items

    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.frugality", description=__doc__.splitlines()[0]
    )
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before the window opens")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scenarios", type=_csv(tuple(SCENARIOS)), default=list(SCENARIOS))
    p.add_argument("--durability", type=_csv(("normal", "full")), default=["normal", "full"])
    p.add_argument("--json", action="store_true", help="also print one JSON object")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-frugality-") as tmp:
        results = asyncio.run(measure(args, Path(tmp)))
    summary = summarise(results)
    print(table(summary))
    load = os.getloadavg()[0]
    print(f"medians of {args.rounds} rounds; load {load:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        doc = {"medians": summary, "runs": [asdict(x) for x in results],
               "rounds": args.rounds, "duration_s": args.duration}  # fmt: skip
        print(orjson.dumps(doc).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

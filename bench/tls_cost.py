"""What TLS + JWT cost the agent's uplink: JetStream publish throughput and connect time
against the secure cloud server (TLS, operator mode, an enrolled agent's `.creds` and its
own inbox prefix) and, in the same run on the same machine, against a plain nats-server
with no TLS and no auth (the baseline, started only here: the product has no such mode).

Both servers are real nats-server processes on loopback with the TELEMETRY stream. Each
round publishes the same batches to `telemetry.<site>.<agent>` with `publish_async`,
pipelined (a window of `--window` in flight), and waits for every PubAck; rounds alternate
between the two. Two payload sizes: a 4 KiB batch (about 200 readings, columnar) and a
64 KiB one. Reported: each side's best round (msg/s, MB/s) and the ratio secure/plain of
the best and of the medians; the client's CPU time per message (median); and connect +
first PubAck time (handshake + JWT auth).

    python -m bench.tls_cost [--messages 5000] [--rounds 5] [--window 256] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NatsClient

from cloud.streams import ensure_streams
from gateway import permissions, subjects
from gateway.config import NatsSettings, StreamSettings
from gateway.connect import connect
from gateway.pki import write_private
from gateway.security import CloudSecurity
from gateway.servers import NatsServer

SITE, AGENT = "bench", "tls-1"
SIZES = (4096, 65536)


async def _publish_round(
    nc: NatsClient, payload: bytes, n: int, window: int
) -> tuple[float, float]:
    """Wall seconds to publish `n` messages and get every PubAck, and this process's CPU
    seconds meanwhile (less sensitive than wall time to the other load on the machine)."""
    js = nc.jetstream(publish_async_max_pending=window)
    subject = subjects.telemetry(SITE, AGENT)
    t0, c0 = time.perf_counter(), time.process_time()
    futures = []
    for i in range(n):
        hdrs = {"Nats-Msg-Id": f"{t0}-{i}"}
        futures.append(await js.publish_async(subject, payload, headers=hdrs))
    await asyncio.wait_for(asyncio.gather(*futures), 120)
    return time.perf_counter() - t0, time.process_time() - c0


async def _open(settings: NatsSettings | None, url: str, inbox: str) -> NatsClient:
    """The agent's way (gateway.connect: TLS against the CA, its creds, its inbox), or,
    with no settings, a bare nats-py connection: no TLS context at all (building one loads
    a CA store, which is not what the baseline should pay)."""
    if settings is None:
        return await nats.connect(url, name="bench-plain", allow_reconnect=False)
    return await connect(settings, "bench-secure", inbox_prefix=inbox, reconnect=False)


async def _connect_time(settings: NatsSettings | None, url: str, inbox: str) -> float:
    """Connect (TCP, TLS handshake, JWT nonce signing) up to the first PubAck."""
    t0 = time.perf_counter()
    nc = await _open(settings, url, inbox)
    try:
        await nc.jetstream().publish(subjects.telemetry(SITE, AGENT), b"x")
        return time.perf_counter() - t0
    finally:
        await nc.close()


async def _servers(root: Path) -> tuple[NatsServer, NatsServer, NatsSettings]:
    security = CloudSecurity.ensure(root / "security")
    secure = NatsServer(root / "secure", name="secure", security=security)
    plain = NatsServer(root / "plain", name="plain")
    await asyncio.gather(secure.start(), plain.start())
    creds = root / "agent.creds"
    write_private(creds, security.trust.enroll(SITE, AGENT).encode())
    agent = secure.client().model_copy(update={"creds_file": creds})
    for settings in (secure.client("admin"), plain.client()):
        nc = await connect(settings, "bench-setup")
        await ensure_streams(nc.jetstream(), StreamSettings())
        await nc.close()
    return secure, plain, agent


async def measure(messages: int, rounds: int, window: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        secure, plain, agent = await _servers(Path(tmp))
        inbox = permissions.agent_inbox(SITE, AGENT)
        sides: dict[str, tuple[NatsSettings | None, str, str]] = {
            "secure": (agent, agent.url, inbox),
            "plain": (None, plain.url, "_INBOX"),
        }
        try:
            out: dict[str, Any] = {"messages": messages, "rounds": rounds, "window": window}
            conns = {k: await _open(*side) for k, side in sides.items()}
            for size in SIZES:
                payload = bytes(range(256)) * (size // 256)
                times: dict[str, list[float]] = {k: [] for k in sides}
                cpu: dict[str, list[float]] = {k: [] for k in sides}
                for _ in range(rounds):
                    for k, nc in conns.items():  # alternate: the machine's load hits both
                        wall, used = await _publish_round(nc, payload, messages, window)
                        times[k].append(wall)
                        cpu[k].append(used)
                out[f"{size}B"] = _summary(times, messages, size)
                out[f"{size}B"]["client_cpu_us_per_msg"] = {
                    k: round(statistics.median(v) / messages * 1e6, 1) for k, v in cpu.items()
                }
            for nc in conns.values():
                await nc.close()
            connect_s: dict[str, list[float]] = {k: [] for k in sides}
            for _ in range(max(rounds, 5)):
                for k, side in sides.items():
                    connect_s[k].append(await _connect_time(*side))
            out["connect_ms"] = {
                k: round(statistics.median(v) * 1000, 2) for k, v in connect_s.items()
            }
            return out
        finally:
            await asyncio.gather(secure.stop(), plain.stop())


def _summary(times: dict[str, list[float]], n: int, size: int) -> dict[str, Any]:
    best = {k: n / min(v) for k, v in times.items()}
    median = {k: n / statistics.median(v) for k, v in times.items()}
    return {
        "best_msg_s": {k: round(v) for k, v in best.items()},
        "best_MB_s": {k: round(v * size / 1e6, 1) for k, v in best.items()},
        "ratio_best": round(best["secure"] / best["plain"], 3),
        "ratio_median": round(median["secure"] / median["plain"], 3),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    result = asyncio.run(measure(args.messages, args.rounds, args.window))
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        for size in SIZES:
            r = result[f"{size}B"]
            cpu = r["client_cpu_us_per_msg"]
            print(
                f"{size:>6} B: secure {r['best_msg_s']['secure']:>7} msg/s "
                f"({r['best_MB_s']['secure']} MB/s), plain {r['best_msg_s']['plain']:>7} msg/s "
                f"({r['best_MB_s']['plain']} MB/s); ratio best {r['ratio_best']}, "
                f"median {r['ratio_median']}; client CPU per message "
                f"{cpu['secure']} vs {cpu['plain']} us"
            )
        c = result["connect_ms"]
        print(f"connect to first PubAck: secure {c['secure']} ms, plain {c['plain']} ms")
    return result


if __name__ == "__main__":
    main()

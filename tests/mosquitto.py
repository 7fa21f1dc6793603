"""A real Mosquitto broker on a free loopback port, for tests and benchmarks.

Configured for what the agent needs: persistent sessions kept across restarts, a large
in-flight window and queue (Mosquitto drops QoS 1 messages for a persistent session past
`max_queued_messages`, 1000 by default), TCP_NODELAY.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import subprocess
import time
from pathlib import Path

from gateway import process
from gateway.errors import ServerStartError
from tests.conftest import mosquitto_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    def __init__(self, data_dir: Path, *, max_inflight: int = 1000) -> None:
        self.data_dir = Path(data_dir)
        self.max_inflight = max_inflight
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
            "set_tcp_nodelay true\n"
        )
        return conf

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

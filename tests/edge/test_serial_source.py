"""The serial source on pseudo-terminal pairs, the way the fleet simulator exposes serial
devices: the agent opens a stable path (a symlink, like /dev/serial/by-id/...) that is
removed when the "adapter" is unplugged and points at a new pty when it comes back."""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from nats.js.client import JetStreamContext

from edge.agent import Agent
from edge.decoders.frame import encode_frame
from edge.sources.serial import SerialSource
from gateway import config, subjects
from gateway.config import AgentConfig
from gateway.servers import NatsServer
from tests.edge.test_agent_integration import running
from tests.edge.test_mqtt_source import stream_seqs
from tests.helpers import agent_nats, eventually

NOW_MS = 1_795_000_000_000
T = TypeVar("T")


class Adapter:
    """A pty pair behind a symlink; `unplug()` closes it, `plug()` makes a new one."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = self.slave = -1

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # raw line discipline: no echo, no CR/LF translation
        self.link.symlink_to(os.ttyname(self.slave))

    def unplug(self) -> None:
        self.link.unlink()
        os.close(self.master)
        os.close(self.slave)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)


def frames(seqs: range) -> bytes:
    return b"".join(
        encode_frame("dev-s", s, NOW_MS + s, "temperature", 20 + s % 10, "Cel") for s in seqs
    )


def serial_config(tmp_path: Path, cloud: NatsServer, link: Path, **source: object) -> AgentConfig:
    return config.parse(
        AgentConfig,
        {
            "site": "s1",
            "agent": "a1",
            "data_dir": str(tmp_path / "agent"),
            "nats": agent_nats(cloud),
            "sources": [{"type": "serial", "port": str(link), **source}],
            "batch": {"max_readings": 100, "linger_ms": 20},
        },
    )


async def test_port_closed_and_reopened_mid_stream_loses_no_complete_frame(
    tmp_path: Path, cloud_server: NatsServer, js: JetStreamContext
) -> None:
    link = tmp_path / "ttyUSB-sensor"
    adapter = Adapter(link)
    adapter.plug()
    cfg = serial_config(tmp_path, cloud_server, link, reconnect_max_s=0.2)
    async with running(Agent(cfg)) as agent:
        source = agent.sources[0]
        assert isinstance(source, SerialSource)
        await asyncio.wait_for(source.connected.wait(), 10)
        # Half of the stream, then half a frame: the adapter is pulled mid-line.
        adapter.write(frames(range(1, 101)) + frames(range(101, 102))[:12])
        # Everything written has reached the agent (a pty moves bytes to the other side
        # asynchronously; what is still in transit when it closes is discarded).
        await eventually(
            _async(lambda: (agent.stats.messages, source.partial_bytes)),
            lambda got: got == (100, 12),
        )
        adapter.unplug()
        await eventually(_async(lambda: source.connected.is_set()), lambda c: not c)
        adapter.plug()
        await eventually(_async(lambda: source.opens), lambda n: n == 2)
        await asyncio.wait_for(source.connected.wait(), 10)
        adapter.write(frames(range(101, 201)))
        seqs = await eventually(lambda: stream_seqs(js), lambda s: len(s) >= 200)
        dlq = await eventually(
            lambda: js.stream_info(subjects.DLQ_STREAM), lambda i: i.state.messages >= 1
        )
        assert agent.stats.dead_letters == {"truncated_frame": 1}
    adapter.unplug()
    assert seqs == list(range(1, 201))  # every complete frame, once
    letter = await js.get_msg(subjects.DLQ_STREAM, dlq.state.first_seq)
    assert letter.data == frames(range(101, 102))[:12]


async def test_bad_lines_become_dead_letters_and_the_stream_goes_on(
    tmp_path: Path, cloud_server: NatsServer, js: JetStreamContext
) -> None:
    link = tmp_path / "ttyS-x"
    adapter = Adapter(link)
    adapter.plug()
    cfg = serial_config(tmp_path, cloud_server, link, max_line=64)
    async with running(Agent(cfg)) as agent:
        source = agent.sources[0]
        assert isinstance(source, SerialSource)
        await asyncio.wait_for(source.connected.wait(), 10)
        cut = frames(range(2, 3))[:20] + b"\r\n"  # a frame cut short by a line break
        corrupt = bytearray(frames(range(3, 4)))
        corrupt[8] ^= 0x01  # one flipped bit on the wire
        adapter.write(frames(range(1, 2)) + cut + bytes(corrupt) + b"x" * 100 + b"\n")
        adapter.write(frames(range(4, 6)))
        seqs = await eventually(lambda: stream_seqs(js), lambda s: len(s) >= 3)
        await eventually(
            _async(lambda: dict(agent.stats.dead_letters)),
            lambda d: sum(d.values()) >= 3,
        )
    adapter.unplug()
    assert seqs == [1, 4, 5]
    assert agent.stats.dead_letters == {
        "missing_checksum": 1,
        "bad_checksum": 1,
        "line_too_long": 1,
    }


def _async(fn: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """A probe for `eventually` from a plain function."""

    async def probe() -> T:
        return fn()

    return probe

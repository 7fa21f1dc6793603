"""Serial devices on pseudo-terminals, read through pyserial as /dev/ttyUSB0 would be.

Here the readers are plain pyserial ports in threads, one per device, all reading at the
same time; `tests/app/test_fleet_verify.py` has the agent's serial sources read 32 of them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from firmware_sim.fleet import Fleet, FleetSettings
from firmware_sim.payloads import frame_checksum
from firmware_sim.transports import Endpoint, SerialPtys
from serial import Serial

from devices.catalog import load_catalog

START_NS = 1_800_000_000_000_000_000
# $GWR,<device>,<seq>,<time_ms>,<metric>,<value>,<unit>*hh (docs/wire-format.md)
_FRAME = re.compile(rb"\$(GWR,([^,]+),(\d+),[^*]*)\*([0-9A-F]{2})\r\n")


@asynccontextmanager
async def serial_fleet(devices: int, seed: int) -> AsyncIterator[tuple[Fleet, list[Serial]]]:
    """A serial fleet whose ports are opened with pyserial before it starts sending (opening
    a port flushes its input, as on real hardware)."""
    settings = FleetSettings(
        devices=devices, transport="serial", types=("gps_tracker",), rate_hz=2.0, seed=seed,
        start_ns=START_NS, grace_s=0.5,
    )  # fmt: skip
    fleet = Fleet(settings, load_catalog())
    baud = load_catalog().types["gps_tracker"].baud
    ports = [Serial(p, baudrate=baud, timeout=30) for p in fleet.serial_ports()]
    stop = asyncio.Event()
    task = asyncio.create_task(fleet.run(stop))
    try:
        yield fleet, ports
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        for port in ports:
            port.close()


def read_lines(port: Serial, n: int) -> list[bytes]:
    return [port.read_until(b"\r\n") for _ in range(n)]


async def read_all(ports: list[Serial], n: int) -> list[list[bytes]]:
    """Every port read at the same time, each by its own thread."""
    return list(await asyncio.gather(*(asyncio.to_thread(read_lines, p, n) for p in ports)))


async def test_32_serial_devices_read_at_once_through_pyserial() -> None:
    async with serial_fleet(32, seed=3) as (fleet, ports):
        names, paths = fleet.device_names(), fleet.serial_ports()
        assert len(set(paths)) == 32 and all(p.startswith("/dev/pts/") for p in paths)
        lines = await read_all(ports, 12)
    for name, got in zip(names, lines, strict=True):
        seqs = []
        for line in got:
            m = _FRAME.fullmatch(line)
            assert m, line
            assert int(m[4], 16) == frame_checksum(m[1]), line
            assert m[2].decode() == name
            seqs.append(int(m[3]))
        assert seqs == list(range(1, 13)), (name, seqs)


async def test_same_seed_same_bytes_on_the_serial_line() -> None:
    async with serial_fleet(4, seed=9) as (_, ports):
        first = await read_all(ports, 9)
    async with serial_fleet(4, seed=9) as (_, ports):
        second = await read_all(ports, 9)
    async with serial_fleet(4, seed=10) as (_, ports):
        other = await read_all(ports, 9)
    assert first == second
    assert first != other


def test_serial_port_is_paced_at_its_baud_rate() -> None:
    delivered: list[object] = []
    ptys = SerialPtys([Endpoint("gps-0", "s1", "frame", 9600)], delivered.append)
    ptys.open()
    try:
        port = ptys.ports[0]
        port.out += b"x" * 5000
        ptys._pump(port, 0.05)  # 50 ms at 960 bytes/s
        assert port.written == 48
        ptys._pump(port, 10.0)  # idle time does not save up: at most 100 ms worth
        assert port.written == 48 + 96
    finally:
        for p in ptys.ports:
            p.close()

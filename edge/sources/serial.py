"""Serial source on pyserial: one frame per line, reopened when the port comes back.

The port's file descriptor is watched by the event loop (`add_reader`), so no thread is
needed. When the port disappears (a USB adapter unplugged, a pty's other end closed)
the read fails; the source closes it, hands any unterminated line over as a truncated
frame (it becomes a dead letter), and retries opening it with a growing, capped, jittered
delay until it is back. Serial has no acknowledgement: a line is the agent's once read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import serial

from edge.sources import Deliver, SourceMessage, SourceStatus, cancel_and_wait, task_status
from gateway.config import SerialSourceSettings
from gateway.retry import Backoff

log = logging.getLogger(__name__)

_REOPEN_FIRST_S = 0.05  # first delay before reopening a port that is gone


class SerialSource:
    def __init__(self, name: str, settings: SerialSourceSettings, deliver: Deliver) -> None:
        self.name = name
        self.settings = settings
        self._deliver = deliver
        self.ready = asyncio.Event()
        self.connected = asyncio.Event()
        self.opens = 0  # how many times the port was opened (1 + reconnects)
        self._task: asyncio.Task[None] | None = None
        self._partial = bytearray()
        self._watch: tuple[int, Callable[[], None]] | None = None  # fd and its reader
        self.paused = False

    @property
    def partial_bytes(self) -> int:
        """Bytes of a line read but not yet terminated."""
        return len(self._partial)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"serial-{self.name}")
        self.ready.set()  # watching the port, whether or not it exists yet

    def status(self) -> SourceStatus:
        dead = task_status(self._task)
        if dead is not None:
            return dead
        if not self.connected.is_set():
            return SourceStatus(False, f"cannot open {self.settings.port}")
        return SourceStatus(True)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        backoff = Backoff(_REOPEN_FIRST_S, self.settings.reconnect_max_s)
        while True:
            try:
                port = self._open()
            except serial.SerialException as exc:
                log.debug("%s: cannot open %s (%s)", self.name, self.settings.port, exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            try:
                await self._read_until_gone(port)
            finally:
                port.close()
                self.connected.clear()
            self._flush_partial()

    def _open(self) -> serial.Serial:
        s = self.settings
        port = serial.Serial(
            port=s.port,
            baudrate=s.baudrate,
            bytesize=s.bytesize,
            parity=s.parity,
            stopbits=s.stopbits,
            timeout=0,  # non-blocking: reads return what is there
        )
        self.opens += 1
        log.info("%s: opened %s", self.name, s.port)
        return port

    async def _read_until_gone(self, port: serial.Serial) -> None:
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()

        def readable() -> None:
            try:
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                log.warning("%s: %s went away (%s); reopening", self.name, self.settings.port, exc)
                gone.set()
                return
            self._feed(data)

        fd = port.fileno()
        self._watch = (fd, readable)
        if not self.paused:
            loop.add_reader(fd, readable)
        self.connected.set()
        try:
            await gone.wait()
        finally:
            self._watch = None
            loop.remove_reader(fd)

    def pause(self) -> None:
        """Stop reading (backpressure, overflow policy `block`): bytes wait in the OS's
        buffer, then the device's flow control (RTS/CTS, XON/XOFF) holds it back, if
        configured; without flow control a device that keeps sending loses data there."""
        self.paused = True
        if self._watch is not None:
            asyncio.get_running_loop().remove_reader(self._watch[0])

    def resume(self) -> None:
        self.paused = False
        if self._watch is not None:
            asyncio.get_running_loop().add_reader(*self._watch)

    def _feed(self, data: bytes) -> None:
        """Split into lines; hand over each complete one, keep the rest for the next read."""
        buf = self._partial
        buf += data
        max_line = self.settings.max_line
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(buf[:nl]).rstrip(b"\r")
            del buf[: nl + 1]
            if len(line) > max_line:
                self._emit(line, "line_too_long")
            elif line:
                self._emit(line)
        if len(buf) > max_line:  # no newline in sight: a dead letter, not unbounded memory
            self._emit(bytes(buf), "line_too_long")
            buf.clear()

    def _flush_partial(self) -> None:
        """The port went away mid-line: the partial line becomes a dead letter."""
        if self._partial.strip():
            self._emit(bytes(self._partial), "truncated_frame")
        self._partial.clear()

    def _emit(self, line: bytes, problem: str = "") -> None:
        msg = SourceMessage(self.name, self.settings.port, line, None, time.time_ns(), problem)
        self._deliver(msg)

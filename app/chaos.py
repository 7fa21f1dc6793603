"""Fault injection for `gateway demo --chaos`: at random moments, SIGKILL the agent and
start it again, stop the cloud `nats-server` for a few seconds, SIGKILL the edge broker
and restart it, publish an oversized message on a device topic, fill the agent's disk and
free it, and SIGKILL the agent in the middle of draining a backlog. Ports are kept across
restarts, so clients find the servers again.

Every fault is one of the failures the guarantee chain is built for (docs/architecture.md); the
demo's summary then shows that the stream still holds every reading exactly once, apart
from readings the agent itself reports as dropped (a full disk), which it shows separately.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.servers import NatsServer

Say = Callable[[str], None]

NEAR_1_MIB = 1_048_000  # fits nats-server's MQTT max_payload (1 MiB) with its topic
LARGER = 2 << 20  # more than the edge broker takes: it refuses it (closes the connection)
_CHUNK = b"\0" * (1 << 20)


class ChildrenLike(Protocol):
    """What the injector needs from the demo's `Children`."""

    async def kill_and_restart(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ChaosTargets:
    """Where the faults land: the edge broker's MQTT port and a device topic for oversized
    messages; the agent's data dir when it is a small filesystem of its own (else None,
    and `disk_full` is skipped with `disk_full_skipped` as the reason)."""

    mqtt_port: int
    device_topic: str
    data_dir: Path | None = None
    disk_full_skipped: str = ""


@dataclass(slots=True)
class OversizedLog:
    sent: list[int] = field(default_factory=list)  # sizes the broker accepted
    refused: int = 0  # messages the broker itself refused (over its max_payload)


class FaultInjector:
    """Injects faults until `stop` is set or the deadline passes; counts them by kind."""

    KINDS = (
        "kill_agent", "restart_cloud", "restart_broker", "oversized", "disk_full",
        "kill_during_drain",
    )  # fmt: skip

    def __init__(
        self,
        children: ChildrenLike,
        cloud: NatsServer,
        edge: NatsServer,
        say: Say,
        seed: int | None = None,
        targets: ChaosTargets | None = None,
    ) -> None:
        self.children = children
        self.cloud = cloud
        self.edge = edge
        self.say = say
        self.rng = random.Random(seed)
        self.targets = targets
        self.faults: Counter[str] = Counter()
        self.skipped: dict[str, str] = {}
        self.oversized = OversizedLog()

    def kinds(self) -> list[str]:
        """The kinds this run can inject; the others are in `skipped`, with the reason."""
        t = self.targets
        if t is None:
            why = "no targets given"
            self.skipped |= {"oversized": why, "disk_full": why}
        elif t.data_dir is None:
            self.skipped["disk_full"] = t.disk_full_skipped or "no small data dir"
        return [k for k in self.KINDS if k not in self.skipped]

    async def run(self, stop: asyncio.Event, until: float, gap: tuple[float, float]) -> None:
        """Faults, spaced by a random gap, each kind in turn (in a shuffled order), until
        monotonic time `until`; every server and process is running again on return."""
        kinds = self.kinds()
        while True:
            self.rng.shuffle(kinds)
            for kind in kinds:
                if not await self._pause(stop, until, self.rng.uniform(*gap)):
                    return
                await self._inject(kind)

    async def _pause(self, stop: asyncio.Event, until: float, delay: float) -> bool:
        if time.monotonic() + delay >= until:
            return False
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            return True
        return False

    async def _inject(self, kind: str) -> None:
        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "kill_agent": self.kill_agent,
            "restart_cloud": self.restart_cloud,
            "restart_broker": self.restart_broker,
            "oversized": self.publish_oversized,
            "disk_full": self.fill_disk,
            "kill_during_drain": self.kill_during_drain,
        }
        await actions[kind]()
        self.faults[kind] += 1

    async def kill_agent(self) -> None:
        self.say("[red]chaos[/]: SIGKILL the agent, then start it again")
        await self.children.kill_and_restart("agent")

    async def restart_cloud(self) -> None:
        down = self.rng.uniform(2, 6)
        self.say(f"[red]chaos[/]: cloud nats-server down for {down:.1f}s")
        await self.cloud.stop()
        await asyncio.sleep(down)
        await self.cloud.start()

    async def restart_broker(self) -> None:
        down = self.rng.uniform(1, 3)
        self.say(f"[red]chaos[/]: SIGKILL the edge MQTT broker; back in {down:.1f}s")
        await self.edge.kill()
        await asyncio.sleep(down)
        await self.edge.start()

    async def kill_during_drain(self) -> None:
        """Cloud down while devices go on (a backlog builds in the buffer), cloud back, and
        the agent SIGKILLed at a random moment of the drain that follows."""
        down, moment = self.rng.uniform(3, 5), self.rng.uniform(0.2, 1.5)
        self.say(
            f"[red]chaos[/]: cloud down {down:.1f}s for a backlog, SIGKILL the agent"
            f" {moment:.1f}s into its drain"
        )
        await self.cloud.stop()
        await asyncio.sleep(down)
        await self.cloud.start()
        await asyncio.sleep(moment)
        await self.children.kill_and_restart("agent")

    async def publish_oversized(self) -> None:
        """About 1 MiB of non-JSON on a device topic (it must become a dead letter with a
        reason, cut to fit); the first time and every other time after, also a message
        larger than the broker takes (nats-server's MQTT listener refuses it itself)."""
        assert self.targets is not None
        sizes = [NEAR_1_MIB] + ([LARGER] if self.faults["oversized"] % 2 == 0 else [])
        for size in sizes:
            self.say(f"[red]chaos[/]: a {size:,}-byte message on {self.targets.device_topic}")
            accepted = await asyncio.to_thread(
                _publish_once, self.targets.mqtt_port, self.targets.device_topic, b"x" * size
            )
            if accepted:
                self.oversized.sent.append(size)
            else:
                self.oversized.refused += 1
                self.say(f"the edge broker refused the {size:,}-byte message")

    async def fill_disk(self) -> None:
        """Fill the agent's filesystem with a filler file, hold it full, then free it."""
        assert self.targets is not None and self.targets.data_dir is not None
        hold = self.rng.uniform(2, 4)
        filler = self.targets.data_dir / "chaos-filler"
        written = await asyncio.to_thread(_fill, filler)
        self.say(f"[red]chaos[/]: agent's disk full ({written:,} filler bytes) for {hold:.1f}s")
        try:
            await asyncio.sleep(hold)
        finally:
            filler.unlink(missing_ok=True)


def _publish_once(port: int, topic: str, payload: bytes, timeout: float = 3.0) -> bool:
    """One QoS 1 publish; True once the broker acknowledged it, False if it would not."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"chaos-{os.getpid()}"
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=timeout)
        return info.is_published()
    except (RuntimeError, ValueError):  # paho: the connection closed under it
        return False
    finally:
        client.disconnect()
        client.loop_stop()


def _fill(path: Path) -> int:
    """Write zeros to `path` until the filesystem has no space left; bytes written."""
    written = 0
    with path.open("wb", buffering=0) as f:  # unbuffered: nothing left to fail at close
        try:
            while True:
                written += f.write(_CHUNK) or 0
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return written

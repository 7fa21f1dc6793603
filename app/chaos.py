"""Fault injection for `gateway demo --chaos`: at random moments, SIGKILL the agent and
start it again, stop the cloud `nats-server` for a few seconds, SIGKILL the edge broker
and restart it. Ports are kept across restarts, so clients find the servers again.

Every fault is one of the failures the guarantee chain is built for (docs/architecture.md); the
demo's summary then shows that the stream still holds every reading exactly once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.servers import NatsServer

Say = Callable[[str], None]


class ChildrenLike(Protocol):
    """What the injector needs from the demo's `Children`."""

    async def kill_and_restart(self, name: str) -> None: ...


class FaultInjector:
    """Injects faults until `stop` is set or the deadline passes; counts them by kind."""

    KINDS = ("kill_agent", "restart_cloud", "restart_broker")

    def __init__(
        self,
        children: ChildrenLike,
        cloud: NatsServer,
        edge: NatsServer,
        say: Say,
        seed: int | None = None,
    ) -> None:
        self.children = children
        self.cloud = cloud
        self.edge = edge
        self.say = say
        self.rng = random.Random(seed)
        self.faults: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event, until: float, gap: tuple[float, float]) -> None:
        """Faults, spaced by a random gap, each kind in turn (in a shuffled order), until
        monotonic time `until`; every server and process is running again on return."""
        kinds = list(self.KINDS)
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

"""Process-level plumbing: logging set-up and running a service until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_until_signalled(service: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `service(stop)`; the first SIGINT/SIGTERM sets `stop` for an orderly exit."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await service(stop)
        await _cancel_leftovers()

    asyncio.run(main())


async def _cancel_leftovers(limit_s: float = 5.0) -> None:
    """Tasks the service left behind (a library's, typically): named in the log, then
    cancelled again and again until done or `limit_s`. `asyncio.run` cancels them only
    once, and a task that swallows that cancellation (Python 3.11's `wait_for` can) would
    keep the process from exiting."""
    me = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    named = False
    while left := [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
        if not named or loop.time() > deadline:
            logging.getLogger(__name__).warning(
                "%s %d task(s) left running at exit: %s",
                "giving up on" if named else "cancelling",
                len(left),
                ", ".join(f"{t.get_name()} ({t.get_coro()!r})" for t in left),
            )
            if named:
                return
            named = True
        for t in left:
            t.cancel()
        await asyncio.wait(left, timeout=0.5)


async def first_of(*waits: Coroutine[Any, Any, Any]) -> int:
    """Run the coroutines until one of them finishes; the index of that one (its error, if
    it failed, is raised). The others are cancelled and awaited, so none outlives the call."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = next(i for i, t in enumerate(tasks) if t in done)
        tasks[first].result()
        return first
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

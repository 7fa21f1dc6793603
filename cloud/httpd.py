"""Run an aiohttp application on 127.0.0.1 for the duration of a `with` block."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, port: int) -> AsyncIterator[int]:
    """Serve `app` on 127.0.0.1:`port` (0 picks a free port); yields the bound port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        sockets = getattr(site._server, "sockets", None) or []
        yield int(sockets[0].getsockname()[1]) if sockets else port
    finally:
        await runner.cleanup()

"""`gateway edge ...` commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway import config
from gateway.commands import group
from gateway.runtime import run_until_signalled


def register(sub: Any) -> None:
    edge = group(sub, "edge", "edge agent")
    run = edge.add_parser("run", help="run the agent")
    run.add_argument("--config", type=Path, required=True)
    run.set_defaults(func=_edge_run)
    _register_stats(edge)
    key = edge.add_parser(
        "buffer-key", help="create a key file for [buffer] encryption_key_file (mode 0600)"
    )
    key.add_argument("path", type=Path, help="where to write it: outside the agent's data_dir")
    key.set_defaults(func=_edge_buffer_key)


def _edge_buffer_key(args: argparse.Namespace) -> int:
    from edge.buffer_cipher import create_key_file

    create_key_file(args.path)
    print(f"wrote {args.path} (mode 0600); set [buffer] encryption_key_file = {str(args.path)!r}")
    return 0


def _edge_run(args: argparse.Namespace) -> int:
    from edge.heap import retain_freed_heap, use_system_allocator
    from edge.preflight import check_paths

    cfg = config.load(config.AgentConfig, args.config)
    check_paths(cfg)  # one line naming the key and path, exit code 2 (app/cli.py)
    use_system_allocator()  # returns only if already in effect (or chosen otherwise)
    if not _uses_websockets(cfg.nats.url):
        _leave_out_aiohttp()
    from edge.agent import Agent

    retain_freed_heap()
    run_until_signalled(Agent(cfg).run)
    return 0


def _uses_websockets(urls: str) -> bool:
    return any(u.strip().lower().startswith(("ws://", "wss://")) for u in urls.split(","))


def _leave_out_aiohttp() -> None:
    """nats-py imports aiohttp, for its websocket transport only, whenever it is installed
    (and goes without it when the import fails): about 8.5 MiB of the agent's resident
    memory that a `nats://`/`tls://` agent never uses. A `None` in `sys.modules` is
    Python's documented way to make an import fail; it must happen before nats is first
    imported, which is why the entry point does it."""
    if "nats" not in sys.modules:
        sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]


def _register_stats(edge: Any) -> None:
    stats = edge.add_parser(
        "stats", help="buffer depth and per-source accounting, read from the agent's buffer"
    )
    where = stats.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the agent's config (finds its data_dir)")
    where.add_argument("--data-dir", type=Path, help="the agent's data directory")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(func=_edge_stats)


def _edge_stats(args: argparse.Namespace) -> int:
    """Exit 0 when every source's account reconciles, 1 when one does not."""
    import orjson

    from edge import accounting

    data_dir = args.data_dir or config.load(config.AgentConfig, args.config).data_dir
    db = accounting.open_readonly(data_dir / "buffer.sqlite3")
    try:
        report = accounting.report(db)
    finally:
        db.close()
    if args.json:
        print(orjson.dumps(report).decode())
    else:
        print(accounting.render(report))
    return 0 if report["reconciles"] else 1

"""What the delivery records (edge/dedupe.py) cost each commit, in bytes written.

The same stream of batches is committed twice to a fresh buffer: once with the records
of its MQTT messages (the agent's path), once without (the baseline: what a commit wrote
before the records, or for a source without packet ids). Two message shapes: one reading
per message (the worst case: one record per reading) and packs of 100 readings (one
record per 100). Bytes written: `write_bytes` in /proc/self/io (pages dirtied, so WAL and
checkpoints included) over the run, per commit and per reading; the ratio is reported.

    python -m bench.deliveries [--readings 200000] [--batch 1000] [--json]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from bench.drain import disk_written, make_batches
from edge.buffer import PendingBatch, SourceCounts, SqliteBuffer
from edge.dedupe import PendingDeliveries, digest
from gateway import codec

SOURCE = "mqtt0"


def run(batches: list[tuple[bytes, int]], per_message: int | None, where: Path) -> int:
    """Bytes written committing `batches`; `per_message`: readings per MQTT message
    recorded, or None for no records."""
    buf = SqliteBuffer(where / "buffer.sqlite3", max_bytes=1 << 40)
    buf.open()
    pid = 0
    start = disk_written()
    for payload, n in batches:
        pending = PendingDeliveries()
        if per_message is not None:
            for m in range(0, n, per_message):
                pid = pid % 65_535 + 1
                content = digest(f"sensors/s/d{m % 100}", payload[m : m + 64])
                buf.deliveries.redelivered(SOURCE, pid, False, content, pending)
        buf.commit(
            PendingBatch(codec.CONTENT_TYPE, n, payload),
            buf.next_batch_id("a1"),
            [],
            pending,
            SourceCounts(Counter({SOURCE: n})),
        )
    buf.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    written = disk_written() - start
    buf.close()
    return written


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    batches = make_batches(args.readings, args.batch)
    out: dict[str, Any] = {"readings": args.readings, "commits": len(batches)}
    with tempfile.TemporaryDirectory(prefix="bench-deliveries-", dir=Path.cwd()) as tmp:
        for name, per in (("baseline", None), ("single", 1), ("packs", 100)):
            where = Path(tmp) / name
            where.mkdir()
            out[name] = run(batches, per, where)
    for name in ("single", "packs"):
        extra = out[name] - out["baseline"]
        out[f"{name}_ratio"] = round(out[name] / out["baseline"], 3)
        out[f"{name}_extra_bytes_per_commit"] = round(extra / len(batches))
        out[f"{name}_extra_bytes_per_reading"] = round(extra / args.readings, 2)
    if args.json:
        print(orjson.dumps(out).decode())
    else:
        for k, v in out.items():
            print(f"{k:36} {v}")
    return out


if __name__ == "__main__":
    main()

"""Reading a deployment bucket whole: every live key's last value, nothing deleted, and
never an empty answer for a bucket that has values (CI once saw `--to 's1/*' matches no
known device` right after the agent's heartbeat was in the bucket)."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from deploy.buckets import ensure_buckets
from gateway import records
from gateway.connect import connect
from gateway.kv_read import read_all, read_entries
from gateway.servers import NatsServer


async def test_read_all_has_the_last_value_of_each_live_key(js: JetStreamContext) -> None:
    await ensure_buckets(js)
    kv = await js.key_value(records.AGENTS_BUCKET)
    for i in range(300):  # more than one fetch of 256
        await kv.put(f"s1.a{i}", b"first")
    await kv.put("s1.a7", b"second")
    await kv.delete("s1.a8")
    await kv.put("s1.a9", b"x")
    await kv.purge("s1.a9")

    values = await read_all(js, records.AGENTS_BUCKET)

    assert len(values) == 298
    assert values["s1.a7"] == b"second" and values["s1.a0"] == b"first"
    assert "s1.a8" not in values and "s1.a9" not in values
    entries = await read_entries(js, records.AGENTS_BUCKET)
    assert entries["s1.a7"].revision == (await kv.get("s1.a7")).revision


async def test_a_value_just_written_is_read_from_another_connection(
    cloud_server: NatsServer, js: JetStreamContext
) -> None:
    """The case of the CI failure: one key, written by one client, read at once by another
    (the CLI); nats-py's watcher could report the bucket empty here."""
    await ensure_buckets(js)
    kv = await js.key_value(records.STATUS_BUCKET)
    reader: NatsClient = await connect(cloud_server.client("admin"), "reader")
    try:
        for i in range(40):
            await kv.put("s1.a1", str(i).encode())
            values = await read_all(reader.jetstream(), records.STATUS_BUCKET)
            assert values == {"s1.a1": str(i).encode()}
        consumers = await js.consumers_info(f"KV_{records.STATUS_BUCKET}")
        assert consumers == []  # each read removed its consumer
    finally:
        await reader.close()


async def test_an_empty_bucket_reads_empty(js: JetStreamContext) -> None:
    await ensure_buckets(js)
    assert await read_all(js, records.DESIRED_BUCKET) == {}


async def test_a_missing_bucket_is_nats_not_found(js: JetStreamContext) -> None:
    """Callers answer "nothing yet" for a bucket that no tool has created."""
    with pytest.raises(NotFoundError):
        await read_all(js, "NO_SUCH_BUCKET")

"""Create the deployment buckets and the bundle store (idempotent), and read them whole."""

from __future__ import annotations

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from gateway import records


async def ensure_buckets(js: JetStreamContext, replicas: int = 1) -> None:
    for name in (
        records.DESIRED_BUCKET,
        records.CONFIG_BUCKET,
        records.STATUS_BUCKET,
        records.AGENTS_BUCKET,
    ):
        try:
            await js.key_value(name)
        except BucketNotFoundError:
            await js.create_key_value(
                KeyValueConfig(bucket=name, history=5, replicas=replicas, storage=StorageType.FILE)
            )
    try:
        await js.object_store(records.BUNDLE_STORE)
    except (BucketNotFoundError, NotFoundError):
        await js.create_object_store(
            records.BUNDLE_STORE,  # nats-py takes the name here, not from the config
            config=ObjectStoreConfig(replicas=replicas, storage=StorageType.FILE),
        )


async def read_all(kv: KeyValue, quiet_s: float = 1.0) -> dict[str, bytes]:
    """Latest value of every key (deleted keys left out).

    Ends at the watcher's end-of-initial-values marker, at an entry with nothing pending
    after it, or after `quiet_s` without any entry: nats-py's marker is not always sent
    (it races the first deliveries), and waiting for it alone can hang forever."""
    out: dict[str, bytes] = {}
    watcher = await kv.watchall(ignore_deletes=True)
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=quiet_s)  # type: ignore[no-untyped-call]
            except NatsTimeoutError:
                break
            if entry is None:
                break
            out[entry.key] = entry.value or b""
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return out

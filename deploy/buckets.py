"""Create the deployment buckets and the bundle store (idempotent)."""

from __future__ import annotations

from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError

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

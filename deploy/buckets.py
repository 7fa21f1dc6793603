"""Create the deployment buckets and the bundle store (idempotent), and read them whole."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    StorageType,
)
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


@dataclass(frozen=True)
class KeyEntry:
    value: bytes
    revision: int  # the stream sequence of the value, as nats-py's `Entry.revision`


async def read_all(js: JetStreamContext, bucket: str) -> dict[str, bytes]:
    """Latest value of every key (deleted and purged keys left out)."""
    return {key: entry.value for key, entry in (await read_entries(js, bucket)).items()}


async def read_entries(
    js: JetStreamContext, bucket: str, fetch_timeout_s: float = 5.0
) -> dict[str, KeyEntry]:
    """Latest value and revision of every key (deleted and purged keys left out).

    Not `kv.watchall()`: nats-py's watcher puts its end-of-initial-values marker first when
    the consumer's info says nothing is pending and no message has reached the client yet,
    which is also the case when the last values are on the wire; a reader that stops at the
    marker then sees an empty bucket (a fleet with one agent looked like none, in CI). A
    pull consumer delivers nothing until asked, so its `num_pending` at creation is exactly
    how many last values there are to fetch."""
    stream = f"KV_{bucket}"  # the stream and subjects behind a bucket
    prefix = f"$KV.{bucket}."
    sub = await js.pull_subscribe(
        f"{prefix}>",
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,  # the server removes it if we die before deleting it
        ),
    )
    out: dict[str, KeyEntry] = {}
    info = await sub.consumer_info()
    try:
        remaining = info.num_pending or 0
        while remaining > 0:
            for msg in await sub.fetch(min(remaining, 256), timeout=fetch_timeout_s):
                remaining = msg.metadata.num_pending or 0
                key = msg.subject[len(prefix) :]
                if _is_removal(msg.headers):
                    out.pop(key, None)
                else:
                    out[key] = KeyEntry(msg.data, msg.metadata.sequence.stream)
    finally:
        await sub.unsubscribe()
        with contextlib.suppress(NatsError):
            await js.delete_consumer(stream, info.name)
    return out


def _is_removal(headers: dict[str, str] | None) -> bool:
    """A delete or purge marker, from the client (KV-Operation) or, since nats-server 2.11,
    from the server's per-key TTL (Nats-Marker-Reason)."""
    if not headers:
        return False
    return headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers

"""Read a KV bucket's current values in one pass, exactly.

A missing bucket raises nats-py's `NotFoundError` (its stream does not exist)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext


@dataclass(frozen=True)
class KeyEntry:
    value: bytes
    revision: int  # the stream sequence of the value, as nats-py's `Entry.revision`


async def read_all(js: JetStreamContext, bucket: str, key_filter: str = ">") -> dict[str, bytes]:
    """Latest value of every key matching `key_filter` (deleted and purged keys left out)."""
    entries = await read_entries(js, bucket, key_filter)
    return {key: entry.value for key, entry in entries.items()}


async def read_entries(
    js: JetStreamContext,
    bucket: str,
    key_filter: str = ">",
    *,
    keys_only: bool = False,
    fetch_timeout_s: float = 5.0,
) -> dict[str, KeyEntry]:
    """Latest value and revision of every key matching `key_filter` (deleted and purged
    keys left out; with `keys_only`, values are empty and only headers travel).

    Not `kv.watchall()`: nats-py's watcher puts its end-of-initial-values marker first when
    the consumer's info says nothing is pending and no message has reached the client yet,
    which is also the case when the last values are on the wire; a reader that stops at the
    marker then sees an empty bucket (a fleet with one agent looked like none, in CI). A
    pull consumer delivers nothing until asked, so its `num_pending` at creation is exactly
    how many last values there are to fetch."""
    stream = f"KV_{bucket}"  # the stream and subjects behind a bucket
    prefix = f"$KV.{bucket}."
    sub = await js.pull_subscribe(
        f"{prefix}{key_filter}",
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            headers_only=keys_only or None,
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

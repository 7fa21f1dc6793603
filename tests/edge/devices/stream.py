"""Every reading now in TELEMETRY, with its unit and time (app.verify's reader keeps only
seqs and values)."""

from __future__ import annotations

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from gateway import codec, subjects
from gateway.reading import Reading


async def stored_readings(js: JetStreamContext) -> list[Reading]:
    info = await js.stream_info(subjects.TELEMETRY_STREAM)
    if info.state.messages == 0:
        return []
    sub = await js.pull_subscribe(
        "telemetry.>",
        stream=subjects.TELEMETRY_STREAM,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0
        ),
    )
    out: list[Reading] = []
    try:
        for _ in range(10_000):  # bounded: at most this many fetches
            msgs = await sub.fetch(512, timeout=5.0)
            for msg in msgs:
                out.extend(codec.decode(msg.data).readings())
            if msgs[-1].metadata.sequence.stream >= info.state.last_seq:
                break
    finally:
        await sub.unsubscribe()
    return out

"""`PubAcks` on a real JetStream: what was stored is acknowledged; what no stream took,
or what failed, is not; a PubAck that comes after its wait is forgotten."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from cloud.pubacks import PubAcks, acknowledged
from cloud.streams import ensure_streams
from gateway import subjects
from gateway.config import StreamSettings


async def test_stored_records_are_acknowledged_and_the_rest_not(
    nc: NatsClient, js: JetStreamContext
) -> None:
    await ensure_streams(js, StreamSettings())
    acks = PubAcks()
    await acks.start(nc)
    try:
        subject = "agg.10s.s1.d1.temp"
        stored = [await acks.publish(subject, b"{}", {"Nats-Msg-Id": f"r{i}"}) for i in range(50)]
        copy = await acks.publish(subject, b"{}", {"Nats-Msg-Id": "r0"})  # a duplicate: stored
        nowhere = await acks.publish("nostream.x", b"{}", {})  # no stream: "no responders"
        # A header the stream rejects: an expected last sequence that is wrong.
        refused = await acks.publish(subject, b"{}", {"Nats-Expected-Last-Sequence": "999999"})
        ok = await acks.wait([*stored, copy, nowhere, refused], timeout=5.0)
        assert ok == {*stored, copy}
        info = await js.stream_info(subjects.AGG_STREAM)
        assert info.state.messages == 50
        # Waited for already: forgotten, so a second wait acknowledges nothing of them.
        assert await acks.wait(stored[:3], timeout=0.2) == set()
    finally:
        await acks.stop()


async def test_a_wait_times_out_on_what_never_comes(nc: NatsClient, js: JetStreamContext) -> None:
    await ensure_streams(js, StreamSettings())
    acks = PubAcks()
    await acks.start(nc)
    try:
        # A reply subject nobody answers: the publish goes to a subject without a stream
        # and without responders status (a core subscriber takes it and says nothing).
        sub = await nc.subscribe("quiet.x")
        quiet = await acks.publish("quiet.x", b"{}", {})
        assert await acks.wait([quiet], timeout=0.3) == set()
        await sub.unsubscribe()
    finally:
        await acks.stop()


@pytest.mark.parametrize(
    ("data", "headers", "ok"),
    [
        (b'{"stream":"AGG","seq":7}', None, True),
        (b'{"stream":"AGG","seq":7,"duplicate":true}', None, True),
        (b'{"error":{"code":503,"err_code":10077,"description":"no space"}}', None, False),
        (b"", {"Status": "503"}, False),  # no responders
        (b"\xff\x00 not json", None, False),
        (b'["stream"]', None, False),
        (b"x" * 1_048_576, None, False),  # a 1 MiB reply of garbage
    ],
)
def test_only_a_puback_naming_its_stream_counts(
    data: bytes, headers: dict[str, str] | None, ok: bool
) -> None:
    assert acknowledged(Msg(None, "r.1", "", data, headers)) is ok  # type: ignore[arg-type]

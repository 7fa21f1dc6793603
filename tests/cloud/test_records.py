"""The window record against its documentation (docs/api.md), without a server."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import orjson
import pytest

from cloud.records import RecordError, WindowRecord
from cloud.tracker import Tracker
from tests.cloud.reference import make_batches

API_DOC = Path(__file__).parents[2] / "docs" / "api.md"


def documented_record() -> bytes:
    """The JSON example under "The window record" in docs/api.md."""
    section = API_DOC.read_text().split("## The window record", 1)[1]
    match = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert match, "docs/api.md has no JSON example of the window record"
    return match.group(1).encode()


def test_the_documented_record_round_trips_to_the_same_keys_and_values() -> None:
    doc = documented_record()
    record = WindowRecord.from_json(doc, strict=True)
    again = record.to_json()
    assert list(orjson.loads(again).items()) == list(orjson.loads(doc).items())  # order too
    assert WindowRecord.from_json(again, strict=True) == record


def test_the_documented_subject_key_and_msg_id() -> None:
    r = WindowRecord.from_json(documented_record(), strict=True)
    assert r.subject() == "agg.10s.s1.pump-7.temp"
    assert r.latest_key() == "10s.s1.pump-7.temp"
    assert r.msg_id() == "agg.10s.s1.pump-7.temp@1700000000000000000:20"
    assert r.window_id == ("10s", "s1", "pump-7", "temp", 1700000000000000000)


def test_records_the_tracker_emits_encode_as_the_documented_object() -> None:
    tracker = Tracker([10], lateness_s=1)
    for sseq, (subject, _, batch) in enumerate(make_batches(np.random.default_rng(7)), 1):
        tracker.ingest(subject, sseq, batch)
    records = tracker.due(set(tracker.agents))
    assert records
    keys = list(orjson.loads(documented_record()))
    for r in records:
        encoded = r.to_json()
        assert list(orjson.loads(encoded)) == keys
        assert orjson.dumps(dataclasses.asdict(r)) == encoded  # as the old dict encoded
        assert WindowRecord.from_json(encoded, strict=True) == r


def test_unknown_fields_from_a_newer_writer_are_ignored_unless_strict() -> None:
    doc = orjson.loads(documented_record()) | {"p99": 23.8}
    assert WindowRecord.from_doc(doc) == WindowRecord.from_json(documented_record())
    with pytest.raises(RecordError, match="unknown fields \\['p99'\\]"):
        WindowRecord.from_doc(doc, strict=True)


def test_a_record_written_before_summarised_existed_reads_as_zero() -> None:
    doc = orjson.loads(documented_record())
    del doc["summarised"]
    assert WindowRecord.from_doc(doc, strict=True) == WindowRecord.from_json(documented_record())
    with pytest.raises(RecordError, match="'summarised'"):
        WindowRecord.from_doc(doc | {"summarised": 1.5})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"count": None}, "'count'"),
        ({"count": True}, "'count'"),
        ({"closed": 1}, "'closed'"),
        ({"site": 7}, "'site'"),
        ({"mean": "21.5"}, "'mean'"),
    ],
)
def test_fields_of_the_wrong_type_are_refused(change: dict[str, object], message: str) -> None:
    doc = orjson.loads(documented_record()) | change
    with pytest.raises(RecordError, match=message):
        WindowRecord.from_doc(doc)


@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b'{"site": "s1"}'])
def test_what_is_not_a_record_is_refused(data: bytes) -> None:
    with pytest.raises(RecordError):
        WindowRecord.from_json(data)


def test_a_non_finite_float_reads_back_as_nan_and_encodes_as_before() -> None:
    r = dataclasses.replace(WindowRecord.from_json(documented_record()), sum=math.inf)
    encoded = r.to_json()
    assert b'"sum":null' in encoded
    back = WindowRecord.from_json(encoded, strict=True)
    assert math.isnan(back.sum) and back.to_json() == encoded

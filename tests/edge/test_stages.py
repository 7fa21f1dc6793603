"""Validation, filters and the SenML batch form: pure functions, no servers."""

from __future__ import annotations

import datetime as dt

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.catalog import load_catalog
from edge.batcher import Batcher
from edge.decoders.context import NO_SEQ
from edge.errors import DecodeError
from edge.filters import Deadband, Dedupe, Downsample, Outlier, build_chain
from edge.filters.outlier import robust_z
from edge.intake import Intake
from edge.metrics import AgentMetrics
from edge.sources import SourceMessage
from edge.validation import Validator
from gateway import codec, config
from gateway.config import AgentConfig, BatchSettings, ValidationSettings
from gateway.errors import CodecError
from gateway.reading import Quality, Reading

NOW = 1_800_000_000_000_000_000
S = 1_000_000_000


def rd(value: float = 21.0, metric: str = "temperature", unit: str = "Cel", **kw: int) -> Reading:
    return Reading(
        "s1",
        "d2" if kw.get("dev") else "d1",
        metric,
        value,
        unit,
        kw.get("time_ns", NOW),
        kw.get("seq", 1),
        kw.get("flags", 0),
    )


# -- validation -----------------------------------------------------------------------------
def validator(**kw: object) -> Validator:
    return Validator(load_catalog(), ValidationSettings.model_validate(kw))


def test_catalog_units_and_ranges() -> None:
    v = validator()
    assert v.check(rd(unit=""), NOW).reading.unit == "Cel"  # filled from the catalog
    assert v.check(rd(), NOW).reading == rd()
    for reading, reason in [(rd(unit="lx"), "unit_mismatch"), (rd(999.0), "out_of_range")]:
        with pytest.raises(DecodeError) as info:
            v.check(reading, NOW)
        assert info.value.reason == reason
    flagged = validator(out_of_range="flag").check(rd(999.0), NOW).reading
    assert flagged.flags == Quality.OUT_OF_RANGE
    assert v.check(rd(metric="unknown_thing", unit="x"), NOW).reading.unit == "x"
    with pytest.raises(DecodeError, match="unknown_metric"):
        validator(unknown_metrics="reject").check(rd(metric="unknown_thing"), NOW)


def test_clock_sanity_replaces_and_keeps_the_original() -> None:
    v = validator(max_future_s=60, max_past_s=3600)
    future = v.check(rd(time_ns=NOW + 120 * S), NOW)
    assert future.reading.time_ns == NOW
    assert future.reading.flags == Quality.CLOCK_CORRECTED
    assert future.original_time_ns == NOW + 120 * S
    assert v.check(rd(time_ns=NOW - 7200 * S), NOW).original_time_ns == NOW - 7200 * S
    assert v.check(rd(time_ns=NOW - 60 * S), NOW).original_time_ns is None


def test_unsynchronised_agent_clock_flags_without_correcting() -> None:
    v = validator(clock_floor=dt.date(2030, 1, 1))  # the agent's clock says 2027: unsynced
    checked = v.check(rd(time_ns=5 * S), NOW)
    assert checked.reading.flags == Quality.CLOCK_UNSYNCED
    assert checked.reading.time_ns == 5 * S and checked.original_time_ns is None


# -- filters --------------------------------------------------------------------------------
def test_deadband_absolute_with_heartbeat() -> None:
    f = Deadband(absolute=0.5, percent=None, heartbeat_s=10)
    out = [f.apply(rd(v, time_ns=NOW + i * S)) for i, v in enumerate([20, 20.2, 20.6, 20.7])]
    assert [r.value if r else None for r in out] == [20, None, 20.6, None]
    beat = f.apply(rd(20.7, time_ns=NOW + 13 * S))
    assert beat is not None and beat.flags == Quality.HEARTBEAT
    assert f.apply(rd(20.7, time_ns=NOW + 14 * S)) is None


def test_deadband_percent() -> None:
    f = Deadband(absolute=None, percent=10, heartbeat_s=60)
    assert f.apply(rd(100.0)) and not f.apply(rd(109.0)) and f.apply(rd(111.0))


def test_downsample_by_event_time() -> None:
    f = Downsample(max_rate_hz=2)  # one per 0.5 s
    times = [0, 0.1, 0.49, 0.5, 0.7, 1.2]
    kept = [t for t in times if f.apply(rd(time_ns=NOW + int(t * S)))]
    assert kept == [0, 0.5, 1.2]


def test_dedupe_by_device_and_seq_within_window() -> None:
    f = Dedupe(window=3)
    seqs = [1, 2, 1, 3, 2, 4, 5, 1]  # 1 falls out of the window after 4
    assert [s for s in seqs if f.apply(rd(seq=s))] == [1, 2, 3, 4, 5, 1]
    assert f.apply(rd(seq=NO_SEQ)) and f.apply(rd(seq=NO_SEQ))
    assert f.apply(rd(seq=2, dev=1))  # another device


def test_outlier_robust_z_score() -> None:
    f = Outlier(window=20, threshold=3.5, min_samples=10, drop=False)
    normal = [f.apply(rd(21 + 0.2 * float(np.sin(i)))) for i in range(30)]
    assert all(r is not None and r.flags == 0 for r in normal)
    spike = f.apply(rd(35.0))
    assert spike is not None and spike.flags == Quality.OUTLIER
    assert Outlier(20, 3.5, 10, drop=True).apply(rd()) is not None  # too few samples yet
    assert robust_z(5.0, np.array([1.0, 2.0, 3.0])) == pytest.approx(0.6745 * 3 / 1)


def test_chain_applies_per_metric_in_order_and_counts() -> None:
    cfg = config.parse(
        AgentConfig,
        {
            "site": "s1",
            "agent": "a1",
            "filters": [
                {"type": "dedupe", "metrics": ["temperature"]},
                {"type": "deadband", "absolute": 1.0, "metrics": ["*"]},
            ],
        },
    )
    chain = build_chain(cfg.filters)
    assert chain.apply(rd(20, seq=1)) and chain.apply(rd(20, seq=1)) is None
    assert chain.apply(rd(20.1, seq=2)) is None
    assert chain.apply(rd(20.1, metric="humidity", seq=1))
    assert chain.dropped == {"dedupe": 1, "deadband": 1}


# -- batches: SenML form, original times, per-series high water -----------------------------
def _batch() -> codec.Batch:
    b = codec.ColumnBuilder("s1", "a1", "a1:x:7")
    b.add("d1", "temperature", "Cel", 21.5, NOW + 123_456_789, 1)
    b.add("d1", "humidity", "%RH", 40.0, NOW + 5 * S + 1, 2, Quality.CLOCK_CORRECTED, 12 * S)
    return b.build()


def test_senml_batch_round_trip_is_exact_and_readable() -> None:
    batch = _batch()
    payload = codec.encode_senml(batch)
    assert payload.startswith(b'[{"bn":"s1/"')
    back = codec.decode(payload)
    assert list(back.readings()) == list(batch.readings())
    assert back.original_time_ns == {1: 12 * S}
    assert codec.decode(codec.encode(batch)).original_time_ns == {1: 12 * S}
    empty = codec.ColumnBuilder("s1", "a1", "b").build()
    assert len(codec.decode(codec.encode_senml(empty))) == 0


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_senml_batch_decode_of_junk_raises_codec_error(data: bytes) -> None:
    try:
        codec.decode(b"[" + data)
    except CodecError:
        pass


def test_batcher_drops_only_exact_copies_and_encodes_senml() -> None:
    # Seqs alone prove nothing (a device may restart its numbering): the same series and
    # seq with another event time is another reading. Only the very same reading again
    # (series, seq, event time, value: the device sent it twice) is dropped.
    b = Batcher("s1", "a1", BatchSettings(encoding="senml"))
    assert b.add_one(rd(seq=5)) and b.add_one(rd(metric="humidity", unit="%RH", seq=5))
    assert b.add_one(rd(seq=5, time_ns=NOW + 1))  # rebooted: seq 5 again, later
    assert not b.add_one(rd(seq=5))  # the very same reading again
    assert b.add_one(rd(seq=NO_SEQ)) and b.add_one(rd(seq=NO_SEQ))  # unnumbered: kept
    flush = b.take("a1:x:1")
    assert flush is not None and flush.batch is not None
    assert flush.batch.content_type == codec.SENML_CONTENT_TYPE
    assert len(codec.decode(flush.batch.payload)) == 5
    assert flush.duplicates == 1 and flush.redelivered == 0 and not flush.deliveries


def test_intake_applies_filters_and_counts_them_in_metrics() -> None:
    cfg = config.parse(
        AgentConfig,
        {
            "site": "s1",
            "agent": "a1",
            "sources": [{"format": "senml"}],
            "filters": [{"type": "deadband", "absolute": 1.0, "heartbeat_s": 3600}],
        },
    )
    metrics = AgentMetrics()
    intake = Intake(cfg, load_catalog(), metrics)
    batcher = Batcher("s1", "a1", cfg.batch)
    bt = NOW // S
    pack = [{"bt": bt, "bu": "Cel"}] + [
        {"n": "temperature", "v": v, "t": i, "seq": i + 1}
        for i, v in enumerate([20.0, 20.5, 21.2, 21.3, 19.0])
    ]
    intake.handle(
        SourceMessage("mqtt0", "sensors/s1/dev-f", orjson.dumps(pack), None, NOW), batcher
    )
    flush = batcher.take("b")
    assert flush is not None and flush.batch is not None
    assert codec.decode(flush.batch.payload).value.tolist() == [20.0, 21.2, 19.0]
    assert intake.stats.filtered == {"deadband": 2}
    assert metrics.value("gateway_agent_readings_filtered_total", filter="deadband") == 2
    assert metrics.value("gateway_agent_readings_decoded_total", source="mqtt0") == 5


def test_a_reading_of_another_site_is_a_dead_letter_not_merged_into_this_one() -> None:
    """A batch carries the agent's one site: a line protocol `site` tag (or a mapping's
    site template) naming another one must not be stored under this agent's site."""
    cfg = AgentConfig.model_validate({"site": "s1", "agent": "a1", "sources": [{"format": "line"}]})
    intake = Intake(cfg, load_catalog(), AgentMetrics())
    batcher = Batcher("s1", "a1", cfg.batch)
    lines = (
        f"temperature,site=s1,device=d1 value=21.0 {NOW}\n"
        f"temperature,site=s2,device=d1 value=35.0 {NOW}\n"
        f"temperature,device=d2 value=22.0 {NOW}\n"
    )
    intake.handle(SourceMessage("mqtt0", "sensors/s1/x", lines.encode(), None, NOW), batcher)
    flush = batcher.take("b")
    assert flush is not None and flush.batch is not None
    stored = codec.decode(flush.batch.payload)
    assert stored.value.tolist() == [21.0, 22.0]
    assert intake.stats.dead_letters == {"foreign_site": 1}
    [letter] = flush.dead_letters
    assert letter.reason == "foreign_site" and "'s2' is not this agent's site 's1'" in letter.detail

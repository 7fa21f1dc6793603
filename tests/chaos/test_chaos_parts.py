"""The parts of `gateway demo --chaos` that need no server (issue 12): pack devices whose
packs the agent's decoders read back reading for reading, reboots that restart the seq,
the fault kinds a run can inject (and why one is skipped), and the accounting of readings
the agent reports dropped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from firmware_sim.fleet import Fleet, FleetSettings
from firmware_sim.ground_truth import GroundTruth

from app.chaos import ChaosTargets, FaultInjector
from app.verify import StreamContents, compare
from devices.catalog import load_catalog
from edge.decoders import Context, decode_json, decode_senml
from gateway import codec


def _pack_fleet(**kw: object) -> Fleet:
    return Fleet(FleetSettings(devices=10, pack_percent=30, **kw), load_catalog())  # type: ignore[arg-type]


def test_a_share_of_devices_sends_json_and_senml_packs_of_100_readings() -> None:
    fleet = _pack_fleet()
    packs = [g for g in fleet.engine.groups if g.k > 1]
    assert [(g.protocol, g.n) for g in packs] == [("json", 2), ("senml", 1)]
    now = time.time_ns()
    for g, decode in zip(packs, (decode_json, decode_senml), strict=True):
        g.prepare(0)
        (msg,) = g.messages(0, set())
        readings = decode(msg.payload, Context("demo", now, device=g.names[0]))
        assert len(readings) == len(msg.seqs) == 100
        assert [r.seq for r in readings] == msg.seqs == list(range(1, 101))
        assert [r.value for r in readings] == msg.values
        assert {r.device for r in readings} == {g.names[0]}


def test_pack_devices_keep_their_own_names_and_rate() -> None:
    fleet = _pack_fleet(rate_hz=5.0)
    names = fleet.device_names()
    assert len(set(names)) == 10
    packs = [g for g in fleet.engine.groups if g.k > 1]
    assert all(g.period_s == pytest.approx(1.0) for g in packs)  # not the fleet's rate


def test_reboots_profile_restarts_the_seq_under_a_new_boot() -> None:
    fleet = _pack_fleet(profile="reboots")
    g = fleet.engine.groups[0]
    i = next(k for k in range(g.n) if g.faulty[k])
    assert not g.seq_persist[i]
    before = g.next_seq(i)
    g.reboot(i)
    after = g.next_seq(i)
    assert after & 0xFFFFFFFF == 1 and after >> 32 == 1 and before == 1


def test_disk_full_is_skipped_with_its_reason_without_a_small_data_dir() -> None:
    targets = ChaosTargets(1883, "sensors/json/demo/th-00000", None, "needs root")
    injector = FaultInjector(None, None, None, print, 1, targets)  # type: ignore[arg-type]
    assert "disk_full" not in injector.kinds()
    assert injector.skipped == {"disk_full": "needs root"}
    with_disk = FaultInjector(None, None, None, print, 1, ChaosTargets(1883, "t", Path(".")))  # type: ignore[arg-type]
    assert with_disk.kinds() == list(FaultInjector.KINDS)


def _truth_and_stream(stored: int, emitted: int) -> tuple[GroundTruth, StreamContents]:
    truth = GroundTruth.empty()
    dev = truth.device("demo", "d1")
    for seq in range(1, emitted + 1):
        dev.record(seq, float(seq))
    builder = codec.ColumnBuilder("demo", "agent1")
    for seq in range(1, stored + 1):
        builder.add("d1", "m", "", float(seq), seq * 1000, seq)
    contents = StreamContents()
    contents.add(builder.build())
    return truth, contents


def test_readings_the_agent_reports_dropped_are_not_missing() -> None:
    truth, contents = _truth_and_stream(stored=90, emitted=100)
    plain = compare(truth, contents)
    assert plain.missing == 10 and not plain.ok
    accounted = compare(truth, contents, dropped={"disk_full": 10, "duplicate": 7})
    assert accounted.unaccounted == 0 and accounted.ok
    assert accounted.summary()["missing"] == 0 and accounted.summary()["not_stored"] == 10
    assert accounted.summary()["dropped"] == 10  # duplicates are not drops
    short = compare(truth, contents, dropped={"disk_full": 4, "duplicate": 6})
    assert short.unaccounted == 6 and not short.ok

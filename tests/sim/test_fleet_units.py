"""Pure parts of the simulator and of `gateway verify`: no server needed."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from firmware_sim import payloads
from firmware_sim.firmware import DeviceGroup
from firmware_sim.ground_truth import GroundTruth
from firmware_sim.mqtt import parse_packets, publish_packet
from firmware_sim.payloads import Sample
from firmware_sim.profiles import get_profile, load_profiles

from app.deadletters import attribute
from app.verify import DeadLetterContents, StreamContents, compare
from devices.catalog import Catalog, load_catalog
from devices.signals import SignalBank
from edge.decoders import DECODERS, Context
from edge.decoders.json_readings import decode_json
from edge.errors import DecodeError
from gateway.config import parse
from gateway.errors import ConfigError

T0 = 1_700_000_000_123_456_000


def _render(seed: int, rounds: int = 40) -> list[bytes]:
    """Every message of every device type for `rounds` rounds, under the chaos profile."""
    catalog, out = load_catalog(), []
    for name, dtype in catalog.types.items():
        names = [f"d{i}" for i in range(8)]
        g = DeviceGroup(name, dtype, names, 0, "s1", get_profile("chaos"), seed, T0)
        for r in range(rounds):
            g.prepare(r)
            for i in g.order:
                hits = g.hits(i)
                if "clock_jump" in hits:
                    g.jump_clock(i)
                if "reboot" in hits:
                    g.reboot(i)
                out += [m.payload for m in g.messages(i, hits)]
    return out


def test_same_seed_gives_byte_identical_messages_of_every_type() -> None:
    first, second, other = _render(5), _render(5), _render(6)
    assert first == second
    assert first != other
    assert len(first) > 500


def test_frame_checksum_matches_nmea() -> None:
    body = b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    assert payloads.frame_checksum(body) == 0x47
    sample = Sample("latitude", 52.520008, "lat", 1700000000123456789, 17)
    line = payloads.frame_line("gps-00002", sample)  # the example in docs/wire-format.md
    assert line == b"$GWR,gps-00002,17,1700000000123,latitude,52.520008,lat*46\r\n"
    bad = payloads.frame_line("gps-00002", sample, bad_checksum=True)
    assert bad[:-4] == line[:-4] and bad != line


def test_json_readings_decode_to_the_same_floats() -> None:
    samples = [Sample("temperature", 0.1 + 0.2, "Cel", T0, 1)]
    samples.append(Sample("humidity", 1e-7, "%RH", T0, 2))
    readings = decode_json(payloads.json_message("s1", "th-1", samples))
    assert [(r.metric, r.value, r.time_ns, r.seq) for r in readings] == [
        (s.metric, s.value, s.time_ns, s.seq) for s in samples
    ]


def test_senml_pack_resolves_names_and_microsecond_times() -> None:
    samples = [Sample("vibration_rms", 0.5, "m/s2", T0 + k * 5_000_000, 10 + k) for k in range(3)]
    pack = orjson.loads(payloads.senml_message("s1", "vib-1", samples))
    assert pack[0]["bn"] == "vib-1:" and pack[0]["bu"] == "m/s2"
    base = pack[0]["bt"]
    for rec, s in zip(pack, samples, strict=True):
        assert round((base + rec.get("t", 0.0)) * 1e6) * 1000 == s.time_ns
        assert rec["seq"] == s.seq


def test_line_protocol_as_documented() -> None:
    s = Sample("power", 1532.25, "W", 1700000000123456789, 9001)
    assert payloads.line_message("s1", "pm-00007", [s]) == (
        b"power,site=s1,device=pm-00007,unit=W value=1532.25,seq=9001i 1700000000123456789\n"
    )


@pytest.mark.parametrize("protocol", ["json", "senml", "line", "frame"])
def test_dead_letters_are_attributed_only_when_complete(protocol: str) -> None:
    nan = Sample("co2", math.nan, "ppm", T0, 51)
    payload = payloads.encode(protocol, "s1", "aq-1", [nan])  # type: ignore[arg-type]
    assert attribute(payload, "s1") == [("s1", "aq-1", 51)]
    rng = np.random.default_rng(1)
    for _ in range(20):
        assert attribute(payloads.truncate(payload, rng, protocol), "s1") == []  # type: ignore[arg-type]
        assert attribute(payloads.garbage(rng, protocol), "s1") == []  # type: ignore[arg-type]


def test_signals_stay_in_range_with_dropouts_and_stuck_values() -> None:
    dtype = load_catalog().types["env_th"]
    dtype = dtype.model_copy(
        update={
            "metrics": {
                m: spec.model_copy(update={"stuck_prob": 0.05, "dropout_prob": 0.05})
                for m, spec in dtype.metrics.items()
            }
        }
    )
    bank = SignalBank(dtype, 200, np.random.default_rng(0))
    values, present = [], []
    for k in range(100):
        v, p = bank.sample(np.full(200, 1.7e9 + k), float(k))
        values.append(v)
        present.append(p)
    v_all, p_all = np.stack(values), np.stack(present)
    assert (v_all[:, :, 0] >= -40).all() and (v_all[:, :, 0] <= 85).all()
    assert 0.5 < p_all.mean() < 1.0  # some dropouts, mostly present
    repeats = (np.diff(v_all[:, :, 0], axis=0) == 0).mean()
    assert repeats > 0.1  # stuck sensors repeat their value


def test_catalog_rejects_a_metric_in_two_types() -> None:
    spec = {"unit": "Cel", "min": 0, "max": 1}
    doc = {"types": {"a": {"metrics": {"t": spec}}, "b": {"metrics": {"t": spec}}}}
    with pytest.raises(ConfigError, match="metric 't' is in both"):
        parse(Catalog, doc, "test")
    cat = load_catalog()
    assert cat.types["env_th"].metrics["temperature"].unit == "Cel"
    co2 = cat.metric("co2")
    assert co2 is not None and (co2.min, co2.max) == (300.0, 10000.0)
    assert cat.metric("nope") is None
    assert {t.protocol for t in cat.types.values()} == {"json", "senml", "line", "frame"}


def test_profiles_load_and_unknown_profile_is_named() -> None:
    assert {"none", "flaky", "chaos"} <= set(load_profiles())
    with pytest.raises(ConfigError, match="unknown fault profile 'nope'"):
        get_profile("nope")


def test_ground_truth_round_trips_and_reads_version_1(tmp_path: Path) -> None:
    truth = GroundTruth.empty()
    dev = truth.device("s1", "d1")
    dev.record(1, 20.5)
    dev.record_invalid(2, "nan")
    dev.record_noise(b"\xff\x00")
    truth.save(tmp_path / "t.json")
    assert GroundTruth.load(tmp_path / "t.json") == truth
    with pytest.raises(ValueError, match="unknown invalid kind"):
        dev.record_invalid(3, "bogus")
    v1 = {"version": 1, "devices": [{"site": "s1", "device": "d1", "count": 1, "first_seq": 1,
                                     "last_seq": 1, "digest": 5}]}  # fmt: skip
    (tmp_path / "v1.json").write_bytes(orjson.dumps(v1))
    assert GroundTruth.load(tmp_path / "v1.json").devices[("s1", "d1")].invalid == []


def _contents(seqs: list[int], values: list[float]) -> StreamContents:
    c = StreamContents()
    c.seqs[("s1", "d1")].append(np.array(seqs, dtype=np.int64))
    c.values[("s1", "d1")].append(np.array(values, dtype=np.float64))
    return c


def test_compare_checks_invalid_readings_against_dead_letters() -> None:
    truth = GroundTruth.empty()
    dev = truth.device("s1", "d1")
    for seq in (1, 2, 4):
        dev.record(seq, float(seq))
    dev.record_invalid(3, "out_of_range")
    dev.record_invalid(5, "truncated")
    dev.record_noise(b'[{"site":"s1","device":"d1","se')
    dev.record_noise(b"\xff garbage")
    dead = DeadLetterContents()
    dead.add("dlq.s1.a1", payloads.json_message("s1", "d1", [Sample("t", 1e9, "Cel", T0, 3)]), "x")
    dead.add("dlq.s1.a1", b"\xff garbage", "invalid_json")
    dead.add("dlq.s1.a1", b"\xff garbage", "invalid_json")  # redelivered: same bytes
    dead.add("dlq.s1.a1", b'[{"site":"s1","device":"d1","se', "invalid_json")
    # The aggregator's dead letters (late readings) are about stored readings: set apart.
    dead.add("dlq.s1.a1", b"GWB\x01late batch", "late", source="telemetry.s1.a1")
    assert dead.downstream == 1
    good = compare(truth, _contents([1, 2, 4], [1.0, 2.0, 4.0]), dead)
    assert good.ok, good
    assert good.summary()["noise_found"] == good.summary()["noise_expected"] == 2

    stored_invalid = compare(truth, _contents([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0]), dead)
    assert not stored_invalid.ok and stored_invalid.invalid_stored == 1
    no_dead = compare(truth, _contents([1, 2, 4], [1.0, 2.0, 4.0]), DeadLetterContents())
    assert no_dead.dead_missing == 1 and no_dead.noise_missing == 2 and not no_dead.ok
    dead.add("dlq.s1.a1", b"other noise", "invalid_json")
    extra = compare(truth, _contents([1, 2, 4], [1.0, 2.0, 4.0]), dead)
    assert extra.noise_unexpected == 1 and not extra.ok
    altered = compare(truth, _contents([1, 2, 4], [1.0, 2.5, 4.0]), dead)
    assert altered.altered == 1 and not altered.ok


def test_mqtt_packets_parse_across_split_reads() -> None:
    big = publish_packet(b"t/x", b"y" * 300, 1, pid=7)  # two-byte remaining length
    stream = bytearray()
    got = []
    for i in range(0, len(big) + 4, 50):
        stream += (big + b"\x40\x02\x00\x07")[i : i + 50]
        got += parse_packets(stream)
    assert [t for t, _ in got] == [3, 4]
    assert got[1][1] == b"\x00\x07" and not stream


def test_fleet_run_cli_serial_summary(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "app", "fleet", "run", "--transport", "serial"]
    cmd += ["--types", "gps_tracker,env_th", "--devices", "3", "--duration", "1.5", "--json"]
    cmd += ["--truth", str(tmp_path / "t.json"), "--ports-file", str(tmp_path / "p.json")]
    out = subprocess.run(cmd, capture_output=True, timeout=60, check=True)
    summary = orjson.loads(out.stdout.splitlines()[-1])
    assert summary["devices"] == 3 and summary["late_sends"] == 0
    ports = orjson.loads((tmp_path / "p.json").read_bytes())
    assert [p["device"] for p in ports] == ["gps-00000", "gps-00001", "th-00000"]
    assert GroundTruth.load(tmp_path / "t.json").devices


def test_fleet_run_cli_rejects_a_bad_broker_url() -> None:
    cmd = [sys.executable, "-m", "app", "fleet", "run", "--broker", "http://x"]
    out = subprocess.run(cmd, capture_output=True, timeout=60)
    assert out.returncode == 2 and b"expected mqtt://HOST:PORT" in out.stderr


def test_every_simulated_message_decodes_as_the_agent_would() -> None:
    """Valid messages give back exactly (device, seq, value) through the agent's decoders;
    invalid ones are rejected by them or by the catalog's range."""

    catalog, checked = load_catalog(), 0
    for name, dtype in catalog.types.items():
        names = [f"{dtype.prefix}-{i:05d}" for i in range(6)]
        g = DeviceGroup(name, dtype, names, 0, "s1", get_profile("chaos"), 3, T0)
        for r in range(40):
            g.prepare(r)
            for i in g.order:
                ctx = Context.for_topic("s1", f"sensors/x/s1/{names[i]}", T0)
                for m in g.messages(i, g.hits(i)):
                    units = [m.payload] if dtype.protocol != "frame" else m.payload.splitlines()
                    got, dead = [], 0
                    for unit in units:
                        try:
                            readings = DECODERS[dtype.protocol](unit, ctx)
                        except DecodeError:
                            dead += 1
                            continue
                        for rd in readings:
                            spec = catalog.metric(rd.metric)
                            assert spec is not None and spec.unit == rd.unit
                            dead += not spec.min <= rd.value <= spec.max
                        got += readings
                    if m.invalid or m.noise:
                        assert dead, m.payload
                    else:
                        assert dead == 0, m.payload
                        assert [(x.device, x.seq, x.value) for x in got] == [
                            (names[i], s, v) for s, v in zip(m.seqs, m.values, strict=True)
                        ]
                        checked += 1
    assert checked > 1000

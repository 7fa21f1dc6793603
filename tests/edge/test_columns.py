"""The columnar fast path for packs gives exactly what the reading-by-reading path gives:
same readings (values, units, flags, times, originals), same dead letters."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.catalog import load_catalog
from edge.batcher import Batcher
from edge.intake import Intake
from edge.metrics import AgentMetrics
from edge.sources import SourceMessage
from gateway import codec, config
from gateway.config import AgentConfig

NOW = time.time_ns()
S = 1_000_000_000

_record = st.fixed_dictionaries(
    {
        "n": st.sampled_from(["d1/temperature", "d2/temperature", "d1/humidity", "d3/x"]),
        "v": st.sampled_from([21.5, -50.0, 45.0, 150.0, 0.0]),
        "t": st.sampled_from([0, -1.5, 0.25, 10_000.0, -900_000.0]),
    },
    optional={
        "u": st.sampled_from(["Cel", "%RH", "K", ""]),
        "seq": st.integers(min_value=-1, max_value=6),
    },
)


def run(packs: list[bytes], columns: bool) -> tuple[object, ...]:
    cfg = config.parse(AgentConfig, {"site": "s1", "agent": "a1", "sources": [{"format": "senml"}]})
    intake = Intake(cfg, load_catalog(), AgentMetrics())
    if not columns:
        plan = intake._plans["mqtt0"]
        intake._plans["mqtt0"] = dataclasses.replace(plan, columns=None)
    batcher = Batcher("s1", "a1", cfg.batch)
    for p in packs:
        intake.handle(SourceMessage("mqtt0", "sensors/s1/dev-t", p, None, NOW), batcher)
    flush = batcher.take("b")
    assert flush is not None
    readings: list[tuple[object, ...]] = []
    if flush.batch is not None:
        batch = codec.decode(flush.batch.payload)
        orig = batch.original_time_ns
        readings = sorted(
            (*dataclasses.astuple(r), orig.get(i, 0)) for i, r in enumerate(batch.readings())
        )
    letters = Counter(d.reason for d in flush.dead_letters)
    return readings, letters


@settings(max_examples=150, deadline=None)
@given(
    packs=st.lists(st.lists(_record, min_size=1, max_size=8), min_size=1, max_size=4),
)
def test_columns_and_rows_agree(packs: list[list[dict[str, object]]]) -> None:
    bt = NOW // S
    payloads = [orjson.dumps([{"bt": bt}, *pack]) for pack in packs]
    assert run(payloads, True) == run(payloads, False)

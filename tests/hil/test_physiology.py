"""Tests of the dyad physiology simulator (hil/physiology.py)."""

from __future__ import annotations

import numpy as np

from hil.physiology import STREAMS, DyadSimulator, GroundTruth, Segment, SimConfig

BRIEF_SCHEDULE = [
    Segment(start_s=0, end_s=120, mode="uncoupled"),
    Segment(120, 300, mode="therapist_led", lag_s=3.0, gain=0.8, channel="both"),
    Segment(300, 420, mode="client_led", lag_s=2.0, gain=0.8, channel="eda"),
    Segment(420, 600, mode="anti_phase", lag_s=0.0, gain=0.8, channel="hr"),
]


def test_read_returns_every_stream_at_its_rate():
    sim = DyadSimulator(SimConfig(seed=1, duration_s=600, schedule=BRIEF_SCHEDULE, therapist_rsa_ln_ms2=6.0,
                                  client_rsa_ln_ms2=5.5))
    chunk = sim.read(1.0)
    assert set(chunk) == set(STREAMS)
    assert chunk["therapist/eda"].shape == (32,) and chunk["client/ppg"].shape == (100,)
    assert all(v.dtype == np.float64 for v in chunk.values())
    assert isinstance(sim.truth, GroundTruth)
    assert sim.value_at("client/eda", 0.5) == chunk["client/eda"][16]

"""Exact sample-loss accounting: sources report samples lost inside their stream, the source thread turns
them into ``lost`` events, the pipeline counts sequence gaps (in samples) and those losses inside the
session, and the unit's status shows them as ``lost_samples_<role>_<signal>``; stale detection runs on the
unit's clock."""

from __future__ import annotations

import queue
import time
from types import SimpleNamespace

import numpy as np
import pytest

from core.vocab import BlockFlags
from device.config import load_config
from device.hwsources import _Paced
from device.pipeline import Pipeline
from device.sources import Source, SourceThread
from device.unit import Unit
from firmware_bridge.block import SampleBlock

T0 = 1_700_000_000_000_000_000


class ManualClock:
    """A unit clock that moves only when told (``speed`` as a ScaledClock's)."""

    def __init__(self, now_ns: int = T0, speed: float = 1.0) -> None:
        self.t = now_ns
        self.speed = speed

    def now_ns(self) -> int:
        return self.t

    def sleep(self, seconds: float, stop=None) -> bool:
        self.t += round(seconds * 1e9)
        return False


class RunningClock(ManualClock):
    """Simulated time running ``speed`` times faster than the host's."""

    def __init__(self, speed: float) -> None:
        super().__init__(T0, speed)
        self._m0 = time.monotonic_ns()

    def now_ns(self) -> int:
        return T0 + round((time.monotonic_ns() - self._m0) * self.speed)


def _blk(stream: str, seq: int, t0_ns: int, n: int = 4, rate_hz: float = 32.0) -> SampleBlock:
    return SampleBlock(stream, seq, t0_ns, rate_hz, np.full(n, 5.0, dtype=np.float32))


def _period_ns(rate_hz: float = 32.0) -> float:
    return 1e9 / rate_hz


@pytest.fixture
def cfg(unit_toml):
    return load_config(unit_toml())


def test_pipeline_counts_gaps_and_source_losses_inside_the_session_only(cfg):
    p = Pipeline(cfg)
    s = "therapist/eda"
    p.on_block(_blk(s, 0, T0))
    p.on_block(_blk(s, 2, T0 + round(8 * _period_ns())))  # a gap before any session: not a session loss
    assert p.lost_blocks[s] == 1 and p.lost_samples.get(s, 0) == 0
    start = T0 + 10**9
    p.start("s1", {"therapist": "T1", "client": "C1"}, start)
    t = start
    p.on_block(_blk(s, 10, t))  # first in-session block: what came before it is not visible in the session
    t += round(4 * _period_ns())
    p.on_block(_blk(s, 13, t + round(8 * _period_ns())))  # 2 blocks of 4 samples skipped
    t += round(12 * _period_ns())
    p.on_block(_blk(s, 14, t + round(3 * _period_ns())), lost_before=3)  # 3 samples lost inside the stream
    assert p.lost_samples[s] == 2 * 4 + 3
    assert p.lost_blocks[s] == 1 + 2  # 0 -> 2 before; 10 -> 13 inside (a start forgets the last seq)
    assert p.lost_samples.get("client/eda", 0) == 0


class GrowingLosses(Source):
    """Blocks of one stream; before the 2nd and 4th block the source learns of 5 and 2 lost samples."""

    name = "t-eda"
    stream = "therapist/eda"
    streams = (stream,)

    def __init__(self) -> None:
        self.k = 0
        self.lost = 0

    def read(self, timeout_s: float) -> list[SampleBlock]:
        if self.k >= 4:
            time.sleep(timeout_s)
            return []
        self.lost += {1: 5, 3: 2}.get(self.k, 0)
        b = _blk(self.stream, self.k, T0 + self.k * 10**8)
        self.k += 1
        return [b]

    def sample_losses(self) -> dict[str, int]:
        return {self.stream: self.lost}


def _events(q: queue.Queue, n: int, timeout_s: float = 10.0) -> list[tuple]:
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        try:
            ev = q.get(timeout=0.1)
        except queue.Empty:
            continue
        if ev[0] != "sensor":
            out.append(ev)
    return out


def test_source_thread_puts_new_losses_before_the_next_block():
    q: queue.Queue = queue.Queue()
    th = SourceThread(GrowingLosses(), q, clock=ManualClock()).start()
    try:
        evs = _events(q, 6)
    finally:
        th.stop()
    kinds = [(k, b.seq if k == "block" else b) for k, _, b in evs]
    assert kinds == [("block", 0), ("lost", 5), ("block", 1), ("block", 2), ("lost", 2), ("block", 3)]
    assert all(a == "therapist/eda" for k, a, _ in evs if k == "lost")


class Stub(_Paced):
    def read(self, timeout_s: float) -> list[SampleBlock]:
        return []


def test_paced_source_keeps_one_grid_and_counts_what_is_missing():
    clock = ManualClock()
    sensor = SimpleNamespace(name="t-eda", stream="therapist/eda", rate_hz=32.0, block_s=0.125)
    src = Stub(sensor, clock, None)  # the drivers' clock counts seconds from T0
    vals = np.ones(4, dtype=np.float32)
    per = 1 / 32.0

    def ns(t_s):
        return T0 + round(t_s * 1e9)

    def emit(*args):
        src._emit(*args)
        return src._hand_out()

    (b0,) = emit(vals, 0.0, None, 0)
    assert b0.t0_ns == T0 and not b0.flags
    # the next 4 samples, their time 1 ms later than the grid (a refined time line): taken as it is
    (b1,) = emit(vals, 4 * per + 0.001, 0, 0)
    assert b1.t0_ns == ns(4 * per + 0.001) and not b1.flags
    # 9 ms off the grid: at most SLEW (4 %) of a period (1.25 ms) is applied per block
    (b2,) = emit(vals, 8 * per + 0.001 + 0.009, 0, 0)
    assert b2.t0_ns == ns(8 * per + 0.001 + src.SLEW * per)
    assert src.sample_losses() == {"therapist/eda": 0}
    # 3 samples lost (missed scans, FIFO overflow): the block is 3 periods further on, GAP_BEFORE
    t_end = 12 * per + 0.001 + src.SLEW * per
    (b3,) = emit(vals, t_end + 3 * per, 3, 0)
    assert b3.flags & BlockFlags.GAP_BEFORE and b3.t0_ns == ns(t_end + 3 * per)
    assert src.sample_losses() == {"therapist/eda": 3}
    # the count says 0 lost but the time is 2 periods on (an inexact loss recovered later): 2 more lost
    t_end += 7 * per
    (b4,) = emit(vals, t_end + 2 * per + 1e-4, 0, 0)
    assert b4.flags & BlockFlags.GAP_BEFORE and b4.t0_ns == ns(t_end + 2 * per + 1e-4)
    assert src.sample_losses() == {"therapist/eda": 5}
    # a reopened sensor (gap unknown) 2 s later on its own grid: the gap comes from the times
    t_end += 6 * per + 1e-4
    (b5,) = emit(vals, t_end + 64.3 * per, None, 0)
    assert b5.flags & BlockFlags.GAP_BEFORE and b5.t0_ns == ns(t_end + (64 + src.SLEW) * per)
    assert src.sample_losses() == {"therapist/eda": 69}
    # a time one period before the end of the last block: the overlapping sample is dropped, nothing lost
    t_end += (68 + src.SLEW) * per
    (b6,) = emit(np.arange(4, dtype=np.float32), t_end - per, 0, 0)
    assert b6.n == 3 and b6.values[0] == 1.0 and b6.t0_ns == ns(t_end) and not b6.flags
    assert src.sample_losses() == {"therapist/eda": 69}
    assert [b.seq for b in (b0, b1, b2, b3, b4, b5, b6)] == list(range(7))


def test_paced_source_counts_a_loss_only_with_the_block_after_it():
    """Two blocks stamped in one read (a missed scan splits it): the source thread reports the losses counted
    so far before the first block it gets, so the second block's loss must wait for the second block."""
    clock = ManualClock()
    sensor = SimpleNamespace(name="t-eda", stream="therapist/eda", rate_hz=32.0, block_s=0.125)
    src = Stub(sensor, clock, None)
    vals = np.ones(4, dtype=np.float32)
    src._emit(vals, 0.0, None, 0)
    src._emit(vals, 5 / 32.0, 1, 0)
    (a,) = src._hand_out()
    assert a.seq == 0 and src.sample_losses() == {"therapist/eda": 0}
    (b,) = src._hand_out()
    assert b.seq == 1 and b.flags & BlockFlags.GAP_BEFORE and src.sample_losses() == {"therapist/eda": 1}
    assert src._hand_out() == []


class Silent(Source):
    name = "t-ppg"
    streams = ("therapist/ppg",)

    def read(self, timeout_s: float) -> list[SampleBlock]:
        time.sleep(min(timeout_s, 0.05))
        return []


def _states(q: queue.Queue) -> list[str]:
    out = []
    while True:
        try:
            kind, _, state = q.get_nowait()
        except queue.Empty:
            return out
        if kind == "sensor":
            out.append(state)


def test_stale_sensor_detection_runs_on_the_unit_clock():
    # simulated time 50x faster: 3 simulated seconds of silence pass in 0.06 real s (with a 0.3-s real floor)
    q: queue.Queue = queue.Queue()
    th = SourceThread(Silent(), q, clock=RunningClock(50.0), stale_s=3.0, stale_min_real_s=0.3).start()
    try:
        deadline = time.monotonic() + 10
        states: list[str] = []
        while "fault" not in states and time.monotonic() < deadline:
            states += _states(q)
            time.sleep(0.05)
    finally:
        th.stop()
    assert "fault" in states
    # a unit clock that does not move: no simulated time passes, so no fault however long the real wait
    q2: queue.Queue = queue.Queue()
    th2 = SourceThread(Silent(), q2, clock=ManualClock(), stale_s=0.2, stale_min_real_s=0.0).start()
    try:
        time.sleep(0.8)
    finally:
        th2.stop()
    assert "fault" not in _states(q2)


def test_unit_status_reports_lost_samples(cfg):
    clock = ManualClock()
    unit = Unit(cfg, clock=clock, sources=[GrowingLosses()])
    try:
        unit.pipeline.start("s1", {"therapist": "T1", "client": "C1"}, T0)
        s = "therapist/eda"
        unit.queue.put(("block", "t-eda", _blk(s, 0, T0)))
        unit.queue.put(("lost", s, 5))
        unit.queue.put(("block", "t-eda", _blk(s, 1, T0 + round(9 * _period_ns()))))
        unit.queue.put(("block", "t-eda", _blk(s, 3, T0 + round(17 * _period_ns()))))  # one block skipped
        unit._work_once(0)
        dropped = unit.status().dropped
        assert dropped["lost_samples_therapist_eda"] == 5 + 4
        assert dropped["lost_therapist_eda"] == 1
    finally:
        unit.outbox.close()


class DuckSource:
    """A source that is not a :class:`Source` subclass and has no ``sample_losses`` (as hil's SimulatedSensor)."""

    name = "t-eda"
    streams = ("therapist/eda",)

    def __init__(self) -> None:
        self.k = 0

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read(self, timeout_s: float) -> list[SampleBlock]:
        if self.k >= 2:
            time.sleep(timeout_s)
            return []
        self.k += 1
        return [_blk("therapist/eda", self.k - 1, T0 + self.k * 10**8)]


def test_source_without_loss_report_still_delivers():
    q: queue.Queue = queue.Queue()
    th = SourceThread(DuckSource(), q, clock=ManualClock()).start()
    try:
        evs = _events(q, 2)
    finally:
        th.stop()
    assert [(k, b.seq) for k, _, b in evs] == [("block", 0), ("block", 1)]


def _eda_blocks(drop_every: int = 0, long_gap_at: int | None = None):
    """60 s of smooth skin conductance at 32 Hz in 4-sample blocks, stamped on UTC; one sample dropped
    every ``drop_every`` samples (a missed ADS1115 scan), a 1-s hole at sample ``long_gap_at``."""
    rate, n = 32.0, 32 * 60
    t = np.arange(n) / rate
    x = (5.0 + 0.5 * np.sin(2 * np.pi * 0.05 * t) + 0.3 * np.exp(-((t - 30.0) / 2.0) ** 2)).astype(np.float32)
    keep = np.ones(n, dtype=bool)
    if drop_every:
        keep[drop_every // 2::drop_every] = False
    if long_gap_at is not None:
        keep[long_gap_at:long_gap_at + 32] = False
    blocks, run, seq = [], [], 0
    for i in range(n + 1):
        if i < n and keep[i] and (not run or run[-1] == i - 1) and len(run) < 4:
            run.append(i)
            continue
        if run:
            blocks.append(SampleBlock("client/eda", seq, T0 + round(run[0] * 1e9 / rate), rate, x[run], 0))
            seq += 1
        run = [i] if i < n and keep[i] else []
    return blocks, int((~keep).sum())


def _eda_features(blocks, bridge_s=None):
    from device.features import DspEdaExtractor

    ex = DspEdaExtractor(32.0)
    if bridge_s is not None:
        ex.BRIDGE_S = bridge_s
    out = {}
    for b in blocks:
        out.update(ex.push(b))
    return ex, out


def test_missed_eda_scans_are_bridged_not_invalidating_the_grid():
    """One missed scan a second: bridged (linear over one sample), the 4 Hz EDA stays valid and within
    0.005 µS of the loss-free features; without the bridge (the control) the NaN's settling guard
    invalidates most of the grid; a 1-s hole is never bridged."""
    full_ex, full = _eda_features(_eda_blocks()[0])
    blocks, dropped = _eda_blocks(drop_every=32)
    ex, gapped = _eda_features(blocks)
    assert ex.bridged_samples == dropped == 60
    k0 = min(full)  # the first sample's grid bin (UTC)
    ks = [k for k in full if k >= k0 + 8 and np.isfinite(full[k])]  # after the first 2 s
    ok = [k for k in ks if np.isfinite(gapped.get(k, np.nan))]
    assert len(ok) >= 0.99 * len(ks), (len(ok), len(ks))
    assert max(abs(gapped[k] - full[k]) for k in ok) < 0.005
    _, unbridged = _eda_features(blocks, bridge_s=0.0)
    assert np.mean([np.isfinite(unbridged.get(k, np.nan)) for k in ks]) < 0.6
    hole, _ = _eda_blocks(long_gap_at=32 * 20)
    ex2, holed = _eda_features(hole)
    assert ex2.bridged_samples == 0
    assert not np.isfinite(holed[k0 + 4 * 20 + 2])  # inside the hole: invalid, not invented
    assert np.isfinite(holed[k0 + 4 * 25])  # and valid again after it

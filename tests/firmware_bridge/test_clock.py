"""Clock mapping in simulated time: ±100 ppm drift, 5 ms jitter, 32-bit wrap, device reset."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.clock import ClockMapper, ClockNotSynced

UINT32 = 1 << 32
H0_NS = 5_000_000_000_000  # host monotonic at true time 0


class SimDevice:
    def __init__(self, ppm: float, d0_us: float) -> None:
        self.ppm = ppm
        self.d0_us = d0_us
        self.t_reset = 0.0

    def dev_us(self, t_s: float) -> int:
        return int(self.d0_us + (t_s - self.t_reset) * 1e6 * (1 + self.ppm * 1e-6)) % UINT32

    def reset(self, t_s: float) -> None:
        self.t_reset = t_s
        self.d0_us = 0.0


def host_ns(t_s: float) -> int:
    return H0_NS + round(t_s * 1e9)


def run_probes(mapper, dev, rng, t_from, t_to, period_s=1.0, jitter_s=0.005, outlier_p=0.03):
    t = t_from
    while t < t_to:
        fwd = 0.0005 + rng.uniform(0, jitter_s)
        back = 0.0005 + rng.uniform(0, jitter_s)
        if rng.random() < outlier_p:
            back += rng.uniform(0.02, 0.2)
        turn = rng.uniform(50e-6, 500e-6)
        t2 = t + fwd
        t3 = t2 + turn
        mapper.add_probe(host_ns(t), dev.dev_us(t2), dev.dev_us(t3), host_ns(t3 + back))
        t += period_s * rng.uniform(0.8, 1.2)


def max_error_ms(mapper, dev, t_from, t_to, n=200):
    errs = []
    for ts in np.linspace(t_from, t_to, n):
        errs.append(abs(mapper.device_to_host_ns(dev.dev_us(ts)) - host_ns(ts)) / 1e6)
    return max(errs)


@pytest.mark.parametrize("ppm", [-100.0, 100.0, 37.0])
def test_goal_after_60_s_with_drift_jitter_and_wrap(ppm):
    rng = np.random.default_rng(int(ppm) + 1000)
    dev = SimDevice(ppm, d0_us=UINT32 - 30e6)  # wraps after ~30 s
    mapper = ClockMapper(half_life_s=60.0)
    with pytest.raises(ClockNotSynced):
        mapper.device_to_host_ns(0)
    run_probes(mapper, dev, rng, 0.0, 60.0)
    # the samples just taken (last 5 s) and the next 5 s (extrapolation) are within 2 ms
    err = max_error_ms(mapper, dev, 55.0, 65.0)
    assert err <= 2.0, f"ppm={ppm}: max error {err:.3f} ms"
    assert abs(mapper.drift_ppm - ppm) < 30, f"estimated drift {mapper.drift_ppm:.1f} vs {ppm}"
    assert mapper.resets_detected == 0
    run_probes(mapper, dev, rng, 60.0, 300.0)
    err = max_error_ms(mapper, dev, 290.0, 300.0)
    assert err <= 1.0, f"ppm={ppm}: max error after 300 s {err:.3f} ms"


def test_without_filtering_jitter_the_same_data_would_miss():
    """Sanity that the test can fail: a plain mean of single probes is worse than the goal."""
    rng = np.random.default_rng(7)
    dev = SimDevice(100.0, 0.0)
    t = 0.0
    errs = []
    while t < 60:
        fwd, back = rng.uniform(0, 0.005), rng.uniform(0, 0.005) + (rng.uniform(0.02, 0.2) if rng.random() < 0.1 else 0)
        naive_offset = (host_ns(t) + host_ns(t + fwd + back)) / 2 - dev.dev_us(t + fwd) * 1000
        errs.append(naive_offset - (H0_NS - 0))
        t += 1
    assert np.ptp(errs) / 1e6 > 2.0


def test_device_reset_starts_new_segment_and_recovers():
    rng = np.random.default_rng(3)
    dev = SimDevice(-80.0, 123_456_789.0)
    mapper = ClockMapper(half_life_s=30.0)
    run_probes(mapper, dev, rng, 0.0, 90.0)
    seg = mapper.segment
    dev.reset(90.5)
    run_probes(mapper, dev, rng, 91.0, 160.0)
    assert mapper.resets_detected == 1
    assert mapper.segment == seg + 1
    err = max_error_ms(mapper, dev, 155.0, 160.0)
    assert err <= 2.0, f"after reset: {err:.3f} ms"


def test_speed_factor_emulator_slope():
    """An emulator running 20x faster than real time: nominal slope 50 ns/us."""
    rng = np.random.default_rng(11)
    speed = 20.0
    mapper = ClockMapper(nominal_ns_per_us=1000.0 / speed)
    dev = SimDevice(0.0, 0.0)
    t = 0.0
    while t < 30.0:
        fwd, back = rng.uniform(0, 0.002), rng.uniform(0, 0.002)
        mapper.add_probe(host_ns(t), dev.dev_us((t + fwd) * speed), dev.dev_us((t + fwd) * speed + 100e-6), host_ns(t + fwd + back))
        t += 0.25
    got = mapper.device_to_host_ns(dev.dev_us(29.0 * speed))
    assert abs(got - host_ns(29.0)) / 1e6 < 2.0
    assert mapper.resets_detected == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="half_life_s"):
        ClockMapper(half_life_s=0.1)
    m = ClockMapper()
    assert m.add_probe(10, 0, 0, 5) is False


def test_hours_with_wraps_and_a_long_outage():
    """Two simulated hours (the 32-bit µs counter wraps twice) and an 80-minute gap without probes
    (longer than one wrap period): the unwrap uses the host time elapsed, no false reset."""
    rng = np.random.default_rng(21)
    dev = SimDevice(95.0, d0_us=1e9)
    mapper = ClockMapper(half_life_s=120.0)
    run_probes(mapper, dev, rng, 0.0, 1800.0, period_s=2.0)
    run_probes(mapper, dev, rng, 1800.0 + 80 * 60, 1800.0 + 80 * 60 + 600.0, period_s=2.0)
    assert mapper.resets_detected == 0
    t_end = 1800.0 + 80 * 60 + 600.0
    assert max_error_ms(mapper, dev, t_end - 10, t_end) <= 1.0

"""FifoClock: sample times of a FIFO sensor from its polls, whatever the polls' latency."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.fifoclock import FifoClock

RATE = 100.0
DEPTH = 32


class FifoSensor:
    """Sample j taken at a + j * period; a FIFO of 32 with rollover and a 5-bit saturating overflow count."""

    def __init__(self, a: float, period: float) -> None:
        self.a = a
        self.period = period
        self.read_upto = 0  # true number of the next sample to read

    def taken(self, t: float) -> int:
        return max(0, int(np.floor((t - self.a) / self.period)) + 1)

    def poll(self, snapshot: float) -> tuple[int, int, bool, int]:
        """(n read, lost before them, exact, true number of the first sample read)."""
        taken = self.taken(snapshot)
        n = min(taken - self.read_upto, DEPTH)
        lost = taken - self.read_upto - n
        first = taken - n
        self.read_upto = taken
        return n, min(lost, 31), lost < 31, first


def run(clock: FifoClock, sensor: FifoSensor, t_from: float, t_to: float, rng, *, interval=0.1,
        latency=lambda rng: rng.exponential(0.004), window=lambda rng: 0.0003, stall_at=None, stall_s=0.0):
    """Dithered polls from t_from to t_to; returns (poll time, error of the first sample's time) per poll."""
    out = []
    t = t_from
    last = t_from
    while t < t_to:
        r0 = max(t + latency(rng), last)  # the thread woke up late (and never before its last poll ended)
        if stall_at is not None and r0 >= stall_at:
            r0_, snapshot = r0, r0 + stall_s  # the pointer read hangs (clock stretching) before the snapshot
            r1 = snapshot + window(rng)
            stall_at = None
            n, lost, exact, first_true = sensor.poll(snapshot)
            first = clock.observe(r0_, r1, n, lost, exact)
            # an inexact loss: read again at once (a fresh snapshot with a short window)
            r0b = r1 + 0.0002
            r1b = r0b + window(rng)
            n2, lost2, exact2, first2_true = sensor.poll(r0b + 0.0001)
            first2 = clock.observe(r0b, r1b, n2, lost2, exact2)
            out.append((r1, clock.time_of(first) - (sensor.a + first_true * sensor.period)))
            if n2:
                out.append((r1b, clock.time_of(first2) - (sensor.a + first2_true * sensor.period)))
            t = last = r1b
            t += interval
            continue
        snapshot = r0 + window(rng) * rng.random()
        r1 = snapshot + window(rng) + latency(rng) * (rng.random() < 0.2)  # sometimes preempted after it
        n, lost, exact, first_true = sensor.poll(snapshot)
        first = clock.observe(r0, r1, n, lost, exact)
        if n:
            out.append((r1, clock.time_of(first) - (sensor.a + first_true * sensor.period)))
        last = r1
        t += interval + 0.618 * clock.nominal_period_s  # dithered: the poll phase sweeps the sample period
    return np.array(out)


def test_times_do_not_inherit_poll_latency():
    rng = np.random.default_rng(1)
    sensor = FifoSensor(a=1000.003, period=1 / RATE)
    clock = FifoClock(RATE)
    # latencies of a loaded host: mostly a few ms, one poll in ten 30-150 ms late
    lat = lambda rng: rng.exponential(0.004) + (rng.uniform(0.03, 0.15) if rng.random() < 0.1 else 0.0)  # noqa: E731
    err = run(clock, sensor, 1000.0, 1060.0, rng, latency=lat)
    assert np.abs(err[:, 1]).max() <= 0.006  # never off by more than half a period plus a window
    settled = err[err[:, 0] > 1002.0, 1]
    assert np.abs(settled).max() < 0.0006, np.abs(settled).max()
    assert clock.band_s < 0.001
    assert clock.period_s == pytest.approx(1 / RATE, rel=1e-5)


def test_naive_stamps_would_carry_the_latency():
    """The reference point: stamping by the poll time (now - n * period) is off by the latency."""
    rng = np.random.default_rng(1)
    sensor = FifoSensor(a=1000.003, period=1 / RATE)
    errs = []
    t = 1000.0
    while t < 1020.0:
        n, _, _, first_true = sensor.poll(t)  # the snapshot; the thread is then preempted before it stamps
        r1 = t + rng.exponential(0.004) + (rng.uniform(0.03, 0.15) if rng.random() < 0.1 else 0.0)
        if n:
            errs.append(r1 - n / RATE - (sensor.a + first_true / RATE))
        t += 0.1
    assert np.abs(errs).max() > 0.03


@pytest.mark.parametrize("rate_error", [0.02, -0.015])
def test_sensor_oscillator_error_is_fitted(rate_error):
    rng = np.random.default_rng(2)
    sensor = FifoSensor(a=500.0, period=(1 / RATE) * (1 + rate_error))
    clock = FifoClock(RATE)
    err = run(clock, sensor, 500.0, 620.0, rng)
    settled = err[err[:, 0] > 530.0, 1]
    assert np.abs(settled).max() < 0.001, np.abs(settled).max()
    assert clock.period_s == pytest.approx(sensor.period, rel=1e-4)


def test_saturated_overflow_is_recounted_from_the_line():
    """A pointer read stalled for 1 s (the overflow counter saturates): the number of lost samples is
    unknown to the driver, the clock recovers it and the times stay right."""
    rng = np.random.default_rng(3)
    sensor = FifoSensor(a=20.0, period=1 / RATE)
    clock = FifoClock(RATE)
    err = run(clock, sensor, 20.0, 40.0, rng, stall_at=30.0, stall_s=1.0)
    settled = err[err[:, 0] > 22.0, 1]
    assert np.abs(settled).max() < 0.001, np.abs(settled).max()
    assert clock.recounted > 0
    # the count is exact again: the clock's numbering and the sensor's differ by what it recounted
    assert clock.count + clock.recounted == sensor.read_upto


def test_reset_forgets_the_phase():
    clock = FifoClock(RATE)
    clock.observe(10.0, 10.001, 5)
    clock.observe(10.1037, 10.1039, 10)
    assert clock.count == 15 and clock.synced
    clock.reset()
    assert clock.count == 0 and not clock.synced
    with pytest.raises(RuntimeError):
        clock.time_of(0)
    first = clock.observe(11.0, 11.0005, 3)
    assert first == 0
    # one poll: the phase is known to a period plus the window
    assert clock.band_s == pytest.approx(0.0105)
    assert 11.0005 - 3 / RATE < clock.time_of(0) < 11.0005 - 2 / RATE


def test_bad_arguments():
    with pytest.raises(ValueError):
        FifoClock(0)
    with pytest.raises(ValueError):
        FifoClock(RATE, max_rate_error=0.7)
    clock = FifoClock(RATE)
    with pytest.raises(ValueError):
        clock.observe(1.0, 0.5, 3)
    with pytest.raises(ValueError):
        clock.observe(1.0, 1.5, -1)

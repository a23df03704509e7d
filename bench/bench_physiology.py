"""Benchmark of the dyad physiology simulator: generation cost, value_at cost, and how well a lag can be
recovered per 30-s window from its truth features (ARCHITECTURE §4 windowed cross-correlation, plain numpy).

Run: ``.venv/bin/python bench/bench_physiology.py`` (prints tables; asserts nothing).
"""

from __future__ import annotations

import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from hil.physiology import DyadSimulator, Segment, SimConfig

GRID_HZ = 4.0


def wcc_peaks(x: np.ndarray, y: np.ndarray, win: int = 120, inc: int = 4, max_lag: int = 40):
    """Per window: global-max peak lag (s) and whether mean z over tau > 0 beats mean z over tau < 0."""
    lags = np.arange(-max_lag, max_lag + 1)
    starts = np.arange(max_lag, x.size - win - max_lag, inc)
    xw = sliding_window_view(x, win)[starts]
    xw = (xw - xw.mean(1, keepdims=True)) / xw.std(1, keepdims=True)
    r = np.empty((starts.size, lags.size))
    yw_all = sliding_window_view(y, win)
    for i, lag in enumerate(lags):
        yw = yw_all[starts + lag]
        yw = (yw - yw.mean(1, keepdims=True)) / yw.std(1, keepdims=True)
        r[:, i] = (xw * yw).mean(1)
    z = np.arctanh(np.clip(r, -0.999, 0.999))
    return lags[np.argmax(r, axis=1)] / GRID_HZ, z[:, lags > 0].mean(1) > z[:, lags < 0].mean(1)


def main() -> None:
    print("generation (CPU seconds, construction includes the whole session)")
    print(f"{'simulated':>10} {'cpu_s':>8}")
    for minutes in (10, 60):
        cfg = SimConfig(seed=1, duration_s=60.0 * minutes)
        t0 = time.process_time()
        DyadSimulator(cfg)
        print(f"{minutes:>8} m {time.process_time() - t0:>8.3f}")

    sim = DyadSimulator(SimConfig(seed=1, duration_s=600, motion_per_min=1.0))
    ts = np.random.default_rng(0).uniform(0, 600, 5000)
    print("\nvalue_at cost (µs per value)")
    print(f"{'stream':>14} {'scalar':>8} {'array':>8}")
    for stream in sim.streams:
        t0 = time.perf_counter()
        for t in ts[:2000]:
            sim.value_at(stream, float(t))
        scalar_us = (time.perf_counter() - t0) / 2000 * 1e6
        t0 = time.perf_counter()
        sim.value_at(stream, ts)
        array_us = (time.perf_counter() - t0) / ts.size * 1e6
        print(f"{stream:>14} {scalar_us:>8.1f} {array_us:>8.2f}")

    print("\nlag recovery per 30-s window (therapist_led, lag 3 s, 4 seeds x 400 s; global-max peak)")
    print(f"{'gain':>5} {'feature':>8} {'|err|<=0.25s':>13} {'median|err|':>12} {'mean lag':>9} {'leader ok':>10}")
    for gain in (0.7, 0.8, 0.9):
        for feature in ("arousal", "eda_us", "hr_bpm"):
            err, side = [], []
            for seed in range(4):
                truth = DyadSimulator(SimConfig(seed=seed, duration_s=400, schedule=[
                    Segment(0, 400, "therapist_led", lag_s=3.0, gain=gain)])).truth
                d = getattr(truth, feature)
                peak, ok = wcc_peaks(d["therapist"], d["client"])
                err.append(peak - 3.0)
                side.append(ok)
            e, s = np.concatenate(err), np.concatenate(side)
            print(f"{gain:>5.1f} {feature:>8} {np.mean(np.abs(e) <= 0.25):>13.2f} {np.median(np.abs(e)):>12.2f} "
                  f"{3.0 + e.mean():>9.2f} {s.mean():>10.2f}")


if __name__ == "__main__":
    main()

"""Validate the per-beat PPG quality index (dsp_ext.sqi) on the project's dyad simulator (issue 17, part 3).

Simulated PPG (100 Hz) with random motion artefacts (``motion_per_min``); beats from ``dsp_ext.ppg`` (Elgendi
detector on the 0.5-8 Hz band-passed signal); the truth is the simulator's pulse peaks and its motion
events. Prints, per seed: beats, flagged beats, the share of beats within 50 ms of a true pulse peak among
all / unflagged beats, and the share of beats inside motion artefacts that are flagged.

Run: ``PYTHONPATH=. .venv/bin/python tools/validate_sqi.py [--seeds 4] [--minutes 10]``. Real PPG with
simultaneous ECG is not yet used (no PyPI package with such a recording was set up).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dsp_ext.filters import butter_sos, sosfilt  # noqa: E402
from dsp_ext.ppg import ppg_features  # noqa: E402
from dsp_ext.sqi import beat_template_sqi  # noqa: E402
from hil.physiology import DyadSimulator, SimConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--motion-per-min", type=float, default=1.0)
    args = ap.parse_args(argv)
    rate = 100.0
    tot = np.zeros(5)
    print(f"{'seed':>4} {'beats':>6} {'flagged':>8} {'<=50ms all':>11} {'<=50ms kept':>12} {'in motion flagged':>18}")
    for seed in range(args.seeds):
        cfg = SimConfig(seed=seed, duration_s=args.minutes * 60, ppg_rate_hz=rate,
                        motion_per_min=args.motion_per_min)
        sim = DyadSimulator(cfg)
        x = sim.read(cfg.duration_s)["therapist/ppg"]
        truth = sim.truth
        beats = ppg_features(x, rate).raw_beats
        y = sosfilt(butter_sos(2, (0.5, 8.0), rate, "bandpass"), x)
        _, ok = beat_template_sqi(y, beats, rate)
        t_b = beats / rate
        peaks = truth.pulse_peak_s["therapist"]
        j = np.clip(np.searchsorted(peaks, t_b), 1, len(peaks) - 1)
        err = np.minimum(np.abs(t_b - peaks[j - 1]), np.abs(t_b - peaks[j]))
        good = err <= 0.05
        motion = truth.event_mask("therapist/ppg", t_b, kinds=("motion",))
        row = (len(t_b), int((~ok).sum()), good.mean(), good[ok].mean(),
               (~ok[motion]).mean() if motion.any() else np.nan)
        tot += np.array([row[0], row[1], good.sum(), good[ok].sum(), ok.sum()])
        print(f"{seed:>4} {row[0]:>6} {row[1]:>8} {row[2]:>11.3f} {row[3]:>12.3f} {row[4]:>18.3f}")
    print(f"all: {int(tot[0])} beats, {int(tot[1])} flagged; within 50 ms: all {tot[2] / tot[0]:.3f}, "
          f"unflagged {tot[3] / tot[4]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

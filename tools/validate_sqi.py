"""Validate the per-beat PPG quality index (dsp_ext.sqi) on real PPG with simultaneous ECG and on the dyad
simulator (issue 17, part 3).

**Real** (``--real``, the default part): pyphysio 4.10.0 (GPL-3, PyPI) ships ``pyphysio/test_data/medical.txt.bz2``
inside its wheel: one person, ECG, EDA, BVP (finger PPG) and respiration recorded together, 120 s at 2048 Hz
(the wheel's ``info_medical`` says 1024 Hz, but its length of 120 s, pyphysio's own loader
``_fsamp_medical = 2048`` and a plausible heart rate all say 2048). The file is read with numpy; pyphysio is
never imported. ECG R peaks: zero-phase 5-20 Hz band-pass, local maxima above 40 % of its 99.5th percentile with
a 300 ms refractory period, refined to the raw ECG maximum within ±40 ms. The PPG is brought to the unit's
100 Hz (centred 20-sample mean, linear interpolation) and run through ``dsp_ext.ppg.PpgStream`` exactly as on
the unit (causal band-pass, Elgendi peaks, causal template SQI). Truth: the ECG-derived pulse arrival
``R + PTT``; the pulse transit time PTT (including our causal filter's delay) is the median of beat minus
preceding R over the unflagged beats of the first 60 s; **the last 60 s are held out** and scored: the share
of unflagged beats within 50 ms of an arrival, and which stretches are flagged. A second run adds a synthetic
motion burst (5 s of 0.5-4 Hz noise at twice the PPG's SD) inside the held-out part.

**Simulator**: simulated PPG (100 Hz) with random motion artefacts (``motion_per_min``); beats from ``dsp_ext.ppg`` (Elgendi
detector on the 0.5-8 Hz band-passed signal); the truth is the simulator's pulse peaks and its motion
events. Prints, per seed: beats, flagged beats, the share of beats within 50 ms of a true pulse peak among
all / unflagged beats, and the share of beats inside motion artefacts that are flagged.

Run: ``PYTHONPATH=. .venv/bin/python tools/validate_sqi.py [--seeds 4] [--minutes 10]`` (needs pyphysio
installed without its dependencies: ``pip install --no-deps pyphysio==4.10.0``; the real part is skipped
with a message without it).
"""

from __future__ import annotations

import argparse
import bz2
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dsp_ext.filters import butter_sos, sosfilt  # noqa: E402
from dsp_ext.ppg import PpgStream  # noqa: E402
from dsp_ext.sqi import beat_template_sqi  # noqa: E402
from hil.physiology import DyadSimulator, SimConfig  # noqa: E402

MEDICAL_RATE_HZ = 2048.0
HELD_OUT_FROM_S = 60.0
PPG_RATE_HZ = 100.0


def medical_recording() -> tuple[np.ndarray, np.ndarray] | None:
    """``(ecg, ppg)`` at 2048 Hz from the pyphysio wheel's ``medical.txt.bz2`` (columns ecg, eda, bvp, resp),
    or None when pyphysio is not installed. Found with ``find_spec`` (the package is not imported)."""
    spec = importlib.util.find_spec("pyphysio")
    if spec is None or not spec.submodule_search_locations:
        return None
    f = Path(list(spec.submodule_search_locations)[0]) / "test_data" / "medical.txt.bz2"
    if not f.is_file():
        return None
    with bz2.open(f, "rt") as fh:
        d = np.loadtxt(fh)
    return d[:, 0].copy(), d[:, 2].copy()


def ecg_r_peaks(ecg: np.ndarray, rate: float) -> np.ndarray:
    """R peaks (sample indices) of a clean ECG with upright R waves (see the module docstring)."""
    sos = butter_sos(2, (5.0, 20.0), rate, "bandpass")
    e = sosfilt(sos, sosfilt(sos, ecg)[::-1])[::-1]  # forwards and backwards: no delay
    thr = 0.4 * np.percentile(e, 99.5)
    cand = np.flatnonzero((e[1:-1] > thr) & (e[1:-1] >= e[:-2]) & (e[1:-1] > e[2:])) + 1
    r: list[int] = []
    for c in cand.tolist():
        if r and c - r[-1] < 0.3 * rate:
            if e[c] > e[r[-1]]:
                r[-1] = c
            continue
        r.append(c)
    w = int(0.04 * rate)
    return np.array([max(0, c - w) + int(np.argmax(ecg[max(0, c - w) : c + w])) for c in r], dtype=np.int64)


def to_unit_rate(x: np.ndarray, rate: float, out_rate: float = PPG_RATE_HZ) -> np.ndarray:
    """Centred moving mean over one output sample, then linear interpolation to ``out_rate``."""
    k = int(round(rate / out_rate))
    sm = np.convolve(x, np.ones(k) / k, mode="same")
    t = np.arange(0.0, len(x) / rate - 1.0 / out_rate, 1.0 / out_rate)
    return np.interp(t, np.arange(len(x)) / rate, sm)


def score_against_ecg(ppg: np.ndarray, r_s: np.ndarray, held_out_from_s: float = HELD_OUT_FROM_S) -> dict:
    """Run ``PpgStream`` (100 Hz, beat quality on) on ``ppg`` and score its judged beats against ``R + PTT``
    (PTT from the unflagged beats of 5 s … ``held_out_from_s``; scores on the beats after it)."""
    f = PpgStream(PPG_RATE_HZ).push(ppg)
    tb, ok = f.sqi_beats / PPG_RATE_HZ, f.sqi_ok
    j = np.searchsorted(r_s, tb) - 1
    cal = (tb > 5.0) & (tb < held_out_from_s) & ok & (j >= 0)
    ptt = float(np.median(tb[cal] - r_s[j[cal]]))
    arr = r_s + ptt
    jj = np.clip(np.searchsorted(arr, tb), 1, len(arr) - 1)
    err = np.minimum(np.abs(tb - arr[jj - 1]), np.abs(tb - arr[jj]))
    ho = tb >= held_out_from_s
    good = err <= 0.05
    return {"ptt_s": ptt, "beats": int(ho.sum()), "flagged": int((~ok[ho]).sum()), "all": float(good[ho].mean()),
            "kept": float(good[ho & ok].mean()), "t": tb, "ok": ok, "err": err, "held_out": ho,
            "ibi_valid": f.ibi_valid, "beat_s": f.beat_s, "hr_bpm": f.hr_bpm}


def motion_burst(x: np.ndarray, start_s: float, dur_s: float, seed: int = 0, rate: float = PPG_RATE_HZ) -> np.ndarray:
    """``x`` with ``dur_s`` of 0.5-4 Hz band-limited noise at twice its SD added from ``start_s`` (motion)."""
    rng = np.random.default_rng(seed)
    a, b = int(start_s * rate), int((start_s + dur_s) * rate)
    n = sosfilt(butter_sos(2, (0.5, 4.0), rate, "bandpass"), rng.standard_normal(b - a + 200))[200:]
    y = x.copy()
    y[a:b] += 2.0 * np.std(x) * n / np.std(n)
    return y


def real(burst_at_s: float = 80.0, burst_s: float = 5.0) -> int:
    rec = medical_recording()
    if rec is None:
        print("real: pyphysio is not installed (pip install --no-deps pyphysio==4.10.0); skipped")
        return 0
    ecg, bvp = rec
    r_s = ecg_r_peaks(ecg, MEDICAL_RATE_HZ) / MEDICAL_RATE_HZ
    x = to_unit_rate(bvp, MEDICAL_RATE_HZ)
    print(f"real: pyphysio medical.txt, {len(ecg) / MEDICAL_RATE_HZ:.0f} s, {len(r_s)} R peaks; held out: "
          f"t >= {HELD_OUT_FROM_S:.0f} s")
    print(f"{'run':>14} {'PTT ms':>7} {'beats':>6} {'flagged':>8} {'<=50ms all':>11} {'<=50ms kept':>12}")
    for name, sig in (("as recorded", x), (f"+burst {burst_at_s:.0f}-{burst_at_s + burst_s:.0f} s",
                                             motion_burst(x, burst_at_s, burst_s))):
        s = score_against_ecg(sig, r_s)
        print(f"{name:>14} {1000 * s['ptt_s']:>7.0f} {s['beats']:>6} {s['flagged']:>8} {s['all']:>11.3f} "
              f"{s['kept']:>12.3f}")
        bad = s["t"][s["held_out"] & ~s["ok"]]
        print(f"{'':>14} flagged at (s): {' '.join(f'{v:.1f}' for v in bad)}")
        miss = s["t"][s["held_out"] & (s["err"] > 0.05)]
        print(f"{'':>14} beats > 50 ms off at (s): {' '.join(f'{v:.1f}' for v in miss)}")
    return 0


def simulator(args: argparse.Namespace) -> int:
    """Per seed, for the offline centred index (``beat_template_sqi``) and the causal one the pipeline uses
    (``PpgStream``'s ``sqi_ok``): beats, flagged, share within 50 ms of a true pulse peak (all / unflagged),
    and the share of beats inside motion events that are flagged."""
    rate = 100.0
    tot = {"offline": np.zeros(5), "causal": np.zeros(5)}
    print(f"simulator: {args.seeds} seeds x {args.minutes:g} min, motion {args.motion_per_min:g}/min")
    print(f"{'seed':>4} {'index':>8} {'beats':>6} {'flagged':>8} {'<=50ms all':>11} {'<=50ms kept':>12} "
          f"{'in motion flagged':>18}")
    for seed in range(args.seeds):
        cfg = SimConfig(seed=seed, duration_s=args.minutes * 60, ppg_rate_hz=rate,
                        motion_per_min=args.motion_per_min)
        sim = DyadSimulator(cfg)
        x = sim.read(cfg.duration_s)["therapist/ppg"]
        truth = sim.truth
        f = PpgStream(rate).push(x)
        y = sosfilt(butter_sos(2, (0.5, 8.0), rate, "bandpass"), x)
        _, ok_off = beat_template_sqi(y, f.raw_beats, rate)
        for name, beats, ok in (("offline", f.raw_beats, ok_off), ("causal", f.sqi_beats, f.sqi_ok)):
            t_b = beats / rate
            peaks = truth.pulse_peak_s["therapist"]
            j = np.clip(np.searchsorted(peaks, t_b), 1, len(peaks) - 1)
            err = np.minimum(np.abs(t_b - peaks[j - 1]), np.abs(t_b - peaks[j]))
            good = err <= 0.05
            motion = truth.event_mask("therapist/ppg", t_b, kinds=("motion",))
            row = (len(t_b), int((~ok).sum()), good.mean(), good[ok].mean(),
                   (~ok[motion]).mean() if motion.any() else np.nan)
            tot[name] += np.array([row[0], row[1], good.sum(), good[ok].sum(), ok.sum()])
            print(f"{seed:>4} {name:>8} {row[0]:>6} {row[1]:>8} {row[2]:>11.3f} {row[3]:>12.3f} {row[4]:>18.3f}")
    for name, t in tot.items():
        print(f"{name}: {int(t[0])} beats, {int(t[1])} flagged; within 50 ms: all {t[2] / t[0]:.3f}, "
              f"unflagged {t[3] / t[4]:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--motion-per-min", type=float, default=1.0)
    ap.add_argument("--part", choices=("real", "simulator", "both"), default="both")
    args = ap.parse_args(argv)
    if args.part in ("real", "both"):
        real()
    if args.part in ("simulator", "both"):
        simulator(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-beat PPG quality (template correlation, Orphanidou et al. 2015): artefact beats flagged, clean ones kept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dsp_ext.errors import DspError
from dsp_ext.hrv import HrvStream
from dsp_ext.ppg import PpgStream
from dsp_ext.sqi import ORPHANIDOU_MIN_CORR, BeatSqiStream, beat_template_sqi, causal_template_sqi


def _pulses(rate: float, n_beats: int, ibi_s: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int((n_beats + 1) * ibi_s * rate)) / rate
    beats = (np.arange(n_beats) + 0.5) * ibi_s
    y = np.zeros_like(t)
    for b in beats:
        x = t - b
        y += np.exp(-0.5 * (x / np.where(x < 0, 0.06, 0.12)) ** 2) + 0.3 * np.exp(-0.5 * ((x - 0.3) / 0.08) ** 2)
    return y + 0.02 * rng.standard_normal(len(t)), beats * rate


def test_clean_beats_pass_and_artefact_beats_are_flagged():
    rng = np.random.default_rng(1)
    rate = 100.0
    y, b = _pulses(rate, 60, 0.8, rng)
    corr, ok = beat_template_sqi(y, b, rate)
    assert np.nanmin(corr) > 0.95 and ok[2:-2].all()  # clean pulses look like their template
    art = (b / rate > 20) & (b / rate < 24)
    t = np.arange(len(y)) / rate
    burst = (t > 19.8) & (t < 24.2)
    y2 = y.copy()
    y2[burst] += 3.0 * np.sin(2 * np.pi * 0.7 * t[burst]) + 1.5 * rng.standard_normal(burst.sum())
    corr2, ok2 = beat_template_sqi(y2, b, rate)
    assert not ok2[art].any(), corr2[art]  # every beat inside the motion burst is flagged
    far = (b / rate < 14) | (b / rate > 30)
    assert ok2[far][2:-2].all()  # beats well away from it are kept
    assert ORPHANIDOU_MIN_CORR == 0.86


def test_edges_nan_and_bad_input():
    rng = np.random.default_rng(2)
    y, b = _pulses(100.0, 20, 0.8, rng)
    y[500:520] = np.nan
    corr, ok = beat_template_sqi(y, b, 100.0)
    hit = np.abs(b - 510) < 40
    assert np.isnan(corr[hit]).all() and not ok[hit].any()  # a pulse with a missing sample has no index
    assert beat_template_sqi(y, b[:2], 100.0)[0].shape == (2,)
    with pytest.raises(DspError):
        beat_template_sqi(y[None, :], b, 100.0)
    with pytest.raises(DspError):
        beat_template_sqi(y, b, 0.0)


def _burst(y: np.ndarray, rate: float, a_s: float, b_s: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(len(y)) / rate
    m = (t > a_s) & (t < b_s)
    y = y.copy()
    y[m] += 3.0 * np.sin(2 * np.pi * 0.7 * t[m]) + 1.5 * rng.standard_normal(m.sum())
    return y


@pytest.mark.parametrize("seed", range(4))
def test_stream_equals_its_one_shot_twin_in_any_chunks(seed):
    """``BeatSqiStream`` (buffers, pending beats, forgetting) against ``causal_template_sqi`` on the whole
    record, exactly: beats arriving late (after the samples that end their pulse), empty pushes, a motion
    burst, a NaN gap, a long pause, and random chunkings."""
    rng = np.random.default_rng(seed)
    rate = 100.0
    y, b = _pulses(rate, 150, 0.75, rng)
    y = _burst(y, rate, 30.0, 36.0, rng)
    y[6000:6040] = np.nan
    b = b[(b < 8000) | (b > 9500)]  # 15 s without beats (the window empties)
    want_c, want_ok, want_r = causal_template_sqi(y, b, rate)
    assert len(want_c) >= len(b) - 1 and (~want_ok).sum() >= 8 and want_ok.sum() > 100
    s = BeatSqiStream(rate)
    cuts = np.unique(rng.integers(0, len(y), size=rng.integers(3, 300)))
    lag = int(rng.integers(0, 120))  # the detector reports a beat up to 1.2 s late
    got = []
    for a, e in zip(np.r_[0, cuts], np.r_[cuts, len(y)], strict=True):
        new = b[(b + lag >= a) & (b + lag < e)]
        got.append(s.push(y[a:e], new))
    gb, gc, gok, gr = (np.concatenate([g[i] for g in got]) for i in range(4))
    n = len(want_c)
    np.testing.assert_array_equal(gb[:n], b[:n])
    np.testing.assert_array_equal(gc[:n], want_c)  # NaN where NaN, bit-identical elsewhere
    np.testing.assert_array_equal(gok[:n], want_ok)
    np.testing.assert_array_equal(gr[:n], want_r)
    assert np.all(np.diff(gr) >= 0) and np.all(gr[:n] <= np.ceil(b[:n] + 0.5 * 0.75 * rate) + 2)
    assert s.state_nbytes < 8 * 20 * rate  # bounded: about 14 s of samples


def test_causal_index_flags_the_burst_and_keeps_clean_beats():
    rng = np.random.default_rng(3)
    rate = 100.0
    y, b = _pulses(rate, 80, 0.8, rng)
    corr, ok, _ = causal_template_sqi(_burst(y, rate, 20.0, 24.0, rng), b, rate)
    t = b / rate
    assert not ok[(t > 20.2) & (t < 23.8)].any(), corr
    assert ok[(t > 3) & ((t < 19) | (t > 36))].all()  # back within one window after the burst
    assert not ok[:2].any()  # fewer than 3 beats: no template yet
    with pytest.raises(DspError):
        BeatSqiStream(0.0)


def test_a_pulse_of_the_right_shape_but_too_large_is_flagged():
    """Correlation is blind to scale: a beat scaled up 4x keeps r ~ 1 but fails the amplitude check (SD above
    MAX_AMP_FACTOR x the template pulses' median SD); a beat at half its amplitude is kept."""
    from dsp_ext.sqi import MAX_AMP_FACTOR

    rng = np.random.default_rng(4)
    rate = 100.0
    y, b = _pulses(rate, 40, 0.8, rng)
    for k, factor in ((20, 4.0), (30, 0.5)):
        c = int(b[k])
        y[c - 30 : c + 31] *= factor
    corr, ok, _ = causal_template_sqi(y, b, rate)
    assert corr[20] > ORPHANIDOU_MIN_CORR and not ok[20]
    assert ok[30] and ok[3:20].all() and MAX_AMP_FACTOR == 2.5


def _ppg_counts(rate: float, n_beats: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y, b = _pulses(rate, n_beats, 0.8, rng)
    return 1000.0 * y + 50_000.0, b / rate


def test_pipeline_leaves_artefact_beats_out_of_hr_rmssd_and_rsa_live_and_offline():
    """A 5-s motion burst: with the beat quality on, every corrected interval touching it is invalid, the
    corrected HR and the live HR are NaN there (not a made-up rate), and HRV sees those intervals as invalid;
    with ``sqi=False`` (the control) the same intervals are valid and carry the artefact's rates."""
    rng = np.random.default_rng(5)
    rate = 100.0
    x, truth = _ppg_counts(rate, 150, rng)
    x = x.copy()
    t = np.arange(len(x)) / rate
    m = (t > 50.0) & (t < 55.0)
    x[m] += 1000.0 * (3.0 * np.sin(2 * np.pi * 0.7 * t[m]) + 1.5 * rng.standard_normal(m.sum()))  # motion
    on = PpgStream(rate, live=True)
    f = on.push(x)
    off = PpgStream(rate, live=True, sqi=False).push(x)
    for g in (f, off):
        assert len(g.beat_s) > 100
    def touched(g):
        prev = np.r_[np.nan, g.beat_s[:-1]]
        return (g.beat_s > 50.0) & (prev < 55.0)
    assert not f.ibi_valid[touched(f)].any()
    far = (f.beat_s > 5.0) & ((f.beat_s < 48.0) | (f.beat_s > 68.0))
    assert f.ibi_valid[far].all()
    assert off.ibi_valid[touched(off)].mean() > 0.5  # the control: without the index they pass
    hr_in = f.hr_bpm[(f.time_s > 50.5) & (f.time_s < 54.5)]
    assert np.isnan(hr_in).all()
    assert np.nanmax(np.abs(f.hr_bpm[f.time_s > 5.0] - 75.0)) < 3.0  # only true rates are left
    assert np.nanmax(np.abs(off.hr_bpm[off.time_s > 5.0] - 75.0)) > 10.0  # the control carries the artefact
    lt = f.live_index / 4.0
    # live: the last good rate is held for LiveHr.HOLD_S (3 s) after the last good beat (49.2 s, shown 1 s
    # later), then NaN until good beats return; never an artefact rate
    assert np.isnan(f.live_hr_bpm[(lt > 53.5) & (lt < 56.0)]).all()
    assert np.nanmax(np.abs(f.live_hr_bpm[(lt > 50.0) & (lt < 58.0)] - 75.0)) < 3.0
    assert np.nanmax(np.abs(off.live_hr_bpm[(lt > 50.0) & (lt < 58.0)] - 75.0)) > 10.0  # control
    assert np.nanmax(np.abs(f.live_hr_bpm[lt > 8.0] - 75.0)) < 3.0
    # HRV: the flagged intervals reach HrvStream as invalid (RMSSD uses valid pairs only)
    ep = HrvStream(epoch_s=30.0).push_features(f)
    ep_off = HrvStream(epoch_s=30.0).push_features(off)
    assert len(ep) == len(ep_off) == 3  # epoch 1 (30-60 s) holds the burst
    assert ep[1].rmssd_ms < 2 * max(ep[0].rmssd_ms, ep[2].rmssd_ms)  # the artefact's differences left out
    assert ep_off[1].rmssd_ms > 10 * ep[1].rmssd_ms  # the control: they dominate RMSSD
    # RSA: the flagged gap leaves too few valid points in the epoch (HrvStream's rule): NaN, not a made-up
    # value; without the index the artefact inflates it far above the clean epochs
    assert np.isnan(ep[1].rsa_ln_ms2) and np.isfinite(ep[0].rsa_ln_ms2 + ep[2].rsa_ln_ms2)
    assert ep_off[1].rsa_ln_ms2 > max(ep[0].rsa_ln_ms2, ep[2].rsa_ln_ms2) + 2.0
    # the judged beats are reported with their correlation
    assert len(f.sqi_beats) == len(f.sqi_corr) == len(f.sqi_ok) >= len(f.raw_beats) - 2


def test_pipeline_results_do_not_depend_on_chunking():
    rng = np.random.default_rng(6)
    rate = 100.0
    x, _ = _ppg_counts(rate, 120, rng)
    x = x.copy()
    x[4000:4500] += 2000.0 * rng.standard_normal(500)
    whole = PpgStream(rate, live=True).push(x)
    s = PpgStream(rate, live=True)
    cuts = np.unique(rng.integers(0, len(x), size=150))
    parts = [s.push(x[a:e]) for a, e in zip(np.r_[0, cuts], np.r_[cuts, len(x)], strict=True)]
    for name in ("beat_s", "ibi_ms", "ibi_valid", "index", "hr_bpm", "live_index", "live_hr_bpm", "sqi_beats",
                 "sqi_corr", "sqi_ok"):
        np.testing.assert_array_equal(np.concatenate([getattr(p, name) for p in parts]), getattr(whole, name),
                                      err_msg=name)
    assert (~whole.sqi_ok).sum() >= 3


def _validate_sqi_module():
    spec = importlib.util.spec_from_file_location(
        "validate_sqi", Path(__file__).resolve().parents[2] / "tools" / "validate_sqi.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_real_ppg_against_simultaneous_ecg():
    """pyphysio's ``medical.txt`` (ECG and finger PPG of one person, 120 s): on the held-out last 60 s, at
    least 97 % of the unflagged beats lie within 50 ms of the ECG-derived pulse arrival (R + a transit time
    estimated on the first 60 s); every beat further off is flagged; an added 5-s motion burst is flagged."""
    if importlib.util.find_spec("pyphysio") is None:
        pytest.skip("pyphysio is not installed (make .venv/.installed-test installs it with --no-deps)")
    v = _validate_sqi_module()
    rec = v.medical_recording()
    if rec is None:
        pytest.skip("pyphysio's test_data/medical.txt.bz2 not found")
    ecg, bvp = rec
    r_s = v.ecg_r_peaks(ecg, v.MEDICAL_RATE_HZ) / v.MEDICAL_RATE_HZ
    assert 130 <= len(r_s) <= 150 and np.all(np.diff(r_s) > 0.5)  # ~70 bpm, no double R peaks
    x = v.to_unit_rate(bvp, v.MEDICAL_RATE_HZ)
    s = v.score_against_ecg(x, r_s)
    assert 0.2 < s["ptt_s"] < 0.6 and s["beats"] >= 60
    assert s["kept"] >= 0.97, s["kept"]
    assert s["all"] < 0.97  # the recording has real artefact stretches, so the index has work to do
    assert s["flagged"] <= 0.3 * s["beats"]
    off = s["held_out"] & (s["err"] > 0.05)
    assert not s["ok"][off].any()
    b = v.score_against_ecg(v.motion_burst(x, 80.0, 5.0), r_s)
    inb = (b["t"] > 80.2) & (b["t"] < 84.8)
    assert inb.sum() >= 4 and not b["ok"][inb].any()
    assert b["kept"] >= 0.97

"""Tests of the dyad physiology simulator (hil/physiology.py).

The checks compare the generated signals against the ground truth with independent, plain numpy/scipy
analyses (peak picking, resampling, band-pass filtering, lagged correlation), so a wrong generator fails.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal as sps
from scipy.interpolate import CubicSpline

from core.errors import ConfigError, DyadsyncError
from hil.physiology import (
    AUX_STREAMS,
    STREAMS,
    DyadSimulator,
    GroundTruth,
    Segment,
    SensorEvent,
    SimConfig,
    SimulatorError,
)

BRIEF_SCHEDULE = [
    Segment(start_s=0, end_s=120, mode="uncoupled"),
    Segment(120, 300, mode="therapist_led", lag_s=3.0, gain=0.8, channel="both"),
    Segment(300, 420, mode="client_led", lag_s=2.0, gain=0.8, channel="eda"),
    Segment(420, 600, mode="anti_phase", lag_s=0.0, gain=0.8, channel="hr"),
]
GRID_HZ = 4.0


def brief_config(seed: int = 1, **kw) -> SimConfig:
    args = dict(seed=seed, duration_s=600, eda_rate_hz=32.0, ppg_rate_hz=100.0, schedule=BRIEF_SCHEDULE,
                regulation_effect=0.0, therapist_rsa_ln_ms2=6.0, client_rsa_ln_ms2=5.5)
    args.update(kw)
    return SimConfig(**args)


@pytest.fixture(scope="module")
def brief_sim() -> DyadSimulator:
    return DyadSimulator(brief_config())


def read_all(sim: DyadSimulator, chunks_s) -> dict[str, np.ndarray]:
    parts = {s: [] for s in STREAMS}
    for d in chunks_s:
        for s, v in sim.read(d).items():
            parts[s].append(v)
    return {s: np.concatenate(v) for s, v in parts.items()}


def lagged_r(x: np.ndarray, y: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """r(tau) = corr(x[t], y[t + tau]) (ARCHITECTURE §4: tau > 0 = x (therapist) leads), tau in samples."""
    lags = np.arange(-max_lag, max_lag + 1)
    n = x.size
    r = np.empty(lags.size)
    for i, lag in enumerate(lags):
        a = x[max_lag:n - max_lag]
        b = y[max_lag + lag:n - max_lag + lag]
        r[i] = np.corrcoef(a, b)[0, 1]
    return lags, r


def segment_feature(truth: GroundTruth, feature: str, start_s: float, end_s: float, edge_s: float = 3.0):
    sel = (truth.t_grid_s >= start_s + edge_s) & (truth.t_grid_s < end_s - edge_s)
    d = getattr(truth, feature)
    return d["therapist"][sel], d["client"][sel]


# ---- API, determinism, chunking ------------------------------------------------------------------------


def test_read_returns_every_stream_at_its_rate():
    sim = DyadSimulator(brief_config())
    chunk = sim.read(1.0)
    assert set(chunk) == set(STREAMS)
    assert chunk["therapist/eda"].shape == (32,) and chunk["client/ppg"].shape == (100,)
    assert all(v.dtype == np.float64 for v in chunk.values())
    assert sim.time_s == 1.0 and not sim.finished
    rest = read_all(sim, [599.0, 5.0])
    assert rest["client/eda"].size == 600 * 32 - 32 and rest["therapist/ppg"].size == 600 * 100 - 100
    assert sim.finished
    assert all(v.size == 0 for v in sim.read(1.0).values())


def test_same_seed_same_output_whatever_the_chunking(brief_sim):
    a = read_all(DyadSimulator(brief_config()), [1.0] * 600)
    rng = np.random.default_rng(7)
    chunks = list(rng.uniform(0.003, 7.0, 400))
    chunks += [600.0 - sum(chunks) + 1e-9] if sum(chunks) < 600 else []
    b = read_all(DyadSimulator(brief_config()), chunks)
    c = read_all(DyadSimulator(brief_config()), [0.1] * 6000)
    for s in STREAMS:
        assert a[s].size == b[s].size == c[s].size, s
        assert np.array_equal(a[s], b[s]), s
        assert np.array_equal(a[s], c[s]), s
    other = read_all(DyadSimulator(brief_config(seed=2)), [600.0])
    assert not np.allclose(a["client/eda"], other["client/eda"])
    t1, t2 = DyadSimulator(brief_config()).truth, brief_sim.truth
    assert np.array_equal(t1.beat_times_s["client"], t2.beat_times_s["client"])
    assert np.array_equal(t1.arousal["therapist"], t2.arousal["therapist"])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), duration_s=st.floats(2.0, 40.0), eda_rate_hz=st.floats(1.0, 256.0),
       ppg_rate_hz=st.floats(20.0, 400.0), chunks=st.lists(st.floats(0.001, 9.0), min_size=1, max_size=60))
def test_any_chunking_and_rates_give_the_one_shot_samples(seed, duration_s, eda_rate_hz, ppg_rate_hz, chunks):
    cfg = SimConfig(seed=seed, duration_s=duration_s, eda_rate_hz=eda_rate_hz, ppg_rate_hz=ppg_rate_hz)
    one = DyadSimulator(cfg)
    whole = one.read(duration_s + 1.0)
    sim = DyadSimulator(cfg)
    while sum(chunks) <= duration_s:
        chunks = chunks + chunks
    parts = read_all(sim, chunks)
    for s in STREAMS:
        rate = one.rates_hz[s]
        expected_n = int(np.ceil(duration_s * rate - 1e-6))
        assert whole[s].size == parts[s].size == expected_n, (s, whole[s].size, parts[s].size, expected_n)
        assert np.array_equal(whole[s], parts[s]), s
        np.testing.assert_allclose(one.value_at(s, np.arange(expected_n) / rate), whole[s], rtol=1e-12, atol=1e-12)


def test_value_at_agrees_with_read_and_interpolates():
    sim = DyadSimulator(brief_config())
    data = read_all(sim, [600.0])
    for s in STREAMS:
        rate = sim.rates_hz[s]
        k = np.arange(data[s].size)
        np.testing.assert_allclose(sim.value_at(s, k / rate), data[s], rtol=0, atol=1e-9, err_msg=s)
        assert sim.value_at(s, 123 / rate) == pytest.approx(data[s][123], abs=1e-9)
    # between samples the value lies near its neighbours (a smooth signal plus interpolated noise)
    t = (np.arange(1000, 2000) + 0.5) / 32.0
    mid = sim.value_at("therapist/eda", t)
    lo, hi = data["therapist/eda"][1000:2000], data["therapist/eda"][1001:2001]
    assert np.all(np.abs(mid - 0.5 * (lo + hi)) < 0.01)
    # a drifting clock (+100 ppm) sees the same signal, slightly stretched
    tk = np.arange(0, 60000) / 100.0 * (1 + 100e-6)
    drifted = sim.value_at("client/ppg", tk)
    assert np.corrcoef(drifted[:5000], data["client/ppg"][:5000])[0, 1] > 0.99
    assert isinstance(sim.value_at("client/eda", 10.0), float)
    assert sim.value_at("client/eda", -5.0) > 0.5 and sim.value_at("client/eda", 605.0) > 0.5


def test_scalar_and_array_value_at_agree_including_events():
    sim = DyadSimulator(SimConfig(seed=21, duration_s=300, motion_per_min=2.0, contact_loss_per_h=30.0,
                                  saturation_per_h=30.0))
    assert len(sim.truth.events) > 10
    ts = np.random.default_rng(3).uniform(-10.0, 310.0, 400)
    ts = np.concatenate([ts, [e.start_s + 0.05 for e in sim.truth.events], [e.end_s - 0.05 for e in sim.truth.events]])
    for s in STREAMS + AUX_STREAMS:
        vec = sim.value_at(s, ts)
        one = np.array([sim.value_at(s, float(x)) for x in ts])
        np.testing.assert_allclose(one, vec, rtol=1e-12, atol=1e-12, err_msg=s)
    with pytest.raises(SimulatorError):
        sim.value_at("client/ppg", 310.5)


def test_config_round_trips_through_json_to_the_same_signals():
    cfg = brief_config(seed=5, events=[SensorEvent("client/eda", "contact_loss", 10.0, 20.0)], motion_per_min=1.0)
    text = json.dumps(cfg.to_dict())
    again = SimConfig.from_dict(json.loads(text))
    assert again == cfg
    a, b = DyadSimulator(cfg), DyadSimulator(again)
    t = np.linspace(0, 600, 5001)
    for s in STREAMS:
        assert np.array_equal(a.value_at(s, t), b.value_at(s, t)), s
    with pytest.raises(ConfigError, match="unknown keys"):
        SimConfig.from_dict({"seed": 1, "sede": 2})
    with pytest.raises(ConfigError, match=r"schedule\[0\]"):
        SimConfig.from_dict({"schedule": [{"start_s": 0}]})
    with pytest.raises(ConfigError, match="mode"):
        SimConfig.from_dict({"schedule": [{"start_s": 0, "end_s": 10, "mode": "x"}]})


def test_bad_requests_raise_clear_errors():
    sim = DyadSimulator(brief_config())
    with pytest.raises(SimulatorError, match="unknown stream"):
        sim.value_at("client/ecg", 1.0)
    with pytest.raises(SimulatorError, match="within"):
        sim.value_at("client/eda", 700.0)
    with pytest.raises(SimulatorError, match="finite"):
        sim.value_at("client/eda", np.array([1.0, np.nan]))
    for bad in (0.0, -1.0, float("inf"), "x"):
        with pytest.raises(SimulatorError):
            sim.read(bad)
    assert sim.time_s == 0.0  # nothing consumed by the failed calls
    with pytest.raises(SimulatorError):
        sim.truth.segment_at(601.0)
    assert issubclass(SimulatorError, DyadsyncError) and issubclass(SimulatorError, ValueError)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Segment(0, 10, mode="leader"), "mode"),
        (lambda: Segment(0, 10, mode="therapist_led", channel="ecg"), "channel"),
        (lambda: Segment(10, 5), "after start_s"),
        (lambda: Segment(0, 10, "therapist_led", lag_s=-1.0), "lag_s"),
        (lambda: Segment(0, 10, "in_phase", lag_s=2.0), "lag 0"),
        (lambda: Segment(0, 10, "therapist_led", gain=1.2), "gain"),
        (lambda: SimConfig(seed=-1), "seed"),
        (lambda: SimConfig(duration_s=float("nan")), "duration_s"),
        (lambda: SimConfig(duration_s=100, schedule=[Segment(0, 60), Segment(50, 90)]), "overlap"),
        (lambda: SimConfig(duration_s=100, schedule=[Segment(0, 160)]), "after duration_s"),
        (lambda: SimConfig(duration_s=100, schedule=[(0, 10, "uncoupled")]), "Segment"),
        (lambda: SimConfig(therapist_rsa_ln_ms2=50.0), "therapist_rsa_ln_ms2"),
        (lambda: SimConfig(hr_band_hz=(0.2, 0.1)), "hr_band_hz"),
        (lambda: SensorEvent("client/eda", "motion", 1, 2), "PPG"),
        (lambda: SensorEvent("client/ecg", "contact_loss", 1, 2), "stream"),
        (lambda: DyadSimulator({"seed": 1}), "SimConfig"),
    ],
)
def test_bad_config_raises_config_error(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


# ---- EDA ----------------------------------------------------------------------------------------------


def test_eda_range_noise_and_drift():
    sim = DyadSimulator(brief_config())
    data = read_all(sim, [600.0])
    for role in ("therapist", "client"):
        eda = data[f"{role}/eda"]
        assert 0.5 < eda.min() and eda.max() < 30.0, role
        # white sensor noise: second differences of a smooth signal + noise have SD ~ sqrt(6) * noise
        noise_sd = np.std(np.diff(eda, 2)) / np.sqrt(6)
        assert 0.7 * 0.005 < noise_sd < 1.5 * 0.005, (role, noise_sd)
        truth = sim.truth
        tonic = truth.eda_tonic_us[role]
        assert np.all(truth.eda_us[role] >= tonic - 1e-12)  # SCRs only add conductance
        assert 0.02 < np.std(tonic) / np.mean(tonic) < 0.5


def bateman(x: np.ndarray, tau_rise_s: float, tau_decay_s: float) -> np.ndarray:
    """Bi-exponential SCR shape with unit peak, written here independently of the simulator."""
    tp = tau_rise_s * tau_decay_s / (tau_decay_s - tau_rise_s) * np.log(tau_decay_s / tau_rise_s)
    peak = np.exp(-tp / tau_decay_s) - np.exp(-tp / tau_rise_s)
    xp = np.maximum(x, 0.0)
    return np.where(x > 0, (np.exp(-xp / tau_decay_s) - np.exp(-xp / tau_rise_s)) / peak, 0.0)


@pytest.mark.parametrize("seed", [4, 7])
def test_scr_shapes_in_the_signal_match_the_truth(seed):
    sim = DyadSimulator(brief_config(seed=seed, duration_s=1200, schedule=[]))
    data = read_all(sim, [1200.0])
    truth = sim.truth
    rate = 32.0
    checked = 0
    for role in ("therapist", "client"):
        scrs = truth.scr[role]
        assert len(scrs) > 10, role
        for ev in scrs:
            assert 1.0 <= ev.rise_s <= 3.0 and 3.0 <= ev.half_recovery_s <= 10.0, ev
        t = np.arange(data[f"{role}/eda"].size) / rate
        phasic = data[f"{role}/eda"] - CubicSpline(truth.t_grid_s, truth.eda_tonic_us[role])(t)
        shapes = [ev.amplitude_us * bateman(t - ev.onset_s, ev.tau_rise_s, ev.tau_decay_s) for ev in scrs]
        # the signal is tonic + the listed SCRs + white sensor noise, nothing else
        residual = phasic - np.sum(shapes, axis=0)
        inner = (t > 60) & (t < 1195)  # responses that began before t = 0 are not listed
        assert abs(np.mean(residual[inner])) < 0.003 and np.std(residual[inner]) < 1.2 * 0.005, role
        for ev, shape in zip(scrs, shapes, strict=True):
            if ev.amplitude_us < 0.1 or not 60.0 < ev.onset_s < 1170.0:
                continue
            sel = (t >= ev.onset_s) & (t < ev.onset_s + 25.0)
            x, y = t[sel] - ev.onset_s, (residual + shape)[sel]  # this SCR alone, measured from the signal
            y_peak = np.convolve(y, np.ones(9) / 9, mode="same")
            y_slow = np.convolve(y, np.ones(32) / 32, mode="same")
            # the top of an SCR is flat, so noise moves its argmax: check the peak loosely, the steep rising
            # edge (time to half amplitude) tightly
            i_peak = int(np.argmax(np.where(x < 6.0, y_slow, -np.inf)))
            near = slice(max(i_peak - 48, 0), i_peak + 49)  # parabola through +-1.5 s around the maximum
            c2, c1, _ = np.polyfit(x[near], y[near], 2)
            # the same estimator on the noise-free shape (the SCR peak is skewed, so the vertex is biased)
            e2, e1, _ = np.polyfit(x[near], shape[sel][near], 2)
            assert abs(-c1 / (2 * c2) + e1 / (2 * e2)) < 0.3, (role, ev, -c1 / (2 * c2), -e1 / (2 * e2))
            assert abs(-e1 / (2 * e2) - ev.rise_s) < 0.6
            assert y_peak.max() == pytest.approx(ev.amplitude_us, rel=0.1, abs=0.01)
            fine = np.arange(0.0, 5.0, 0.001)
            expected_half_rise = fine[np.argmax(bateman(fine, ev.tau_rise_s, ev.tau_decay_s) >= 0.5)]
            half_rise = x[np.argmax(y_peak >= 0.5 * ev.amplitude_us)]
            assert abs(half_rise - expected_half_rise) < 0.15, (role, ev, half_rise, expected_half_rise)
            after = np.nonzero((y_slow <= 0.5 * ev.amplitude_us) & (x > ev.rise_s))[0]
            assert after.size, ev
            assert abs(x[after[0]] - ev.rise_s - ev.half_recovery_s) < 0.6, (role, ev)
            checked += 1
    assert checked >= 10


def test_scr_rate_grows_with_arousal():
    sim = DyadSimulator(SimConfig(seed=11, duration_s=3600))
    for role in ("therapist", "client"):
        onsets = np.array([ev.onset_s for ev in sim.truth.scr[role]])
        a = np.interp(onsets, sim.truth.t_grid_s, sim.truth.arousal[role])
        # arousal at SCR onsets is higher than arousal at random times (rate ~ exp(0.8 * arousal))
        assert a.mean() > 0.3, (role, a.mean())


# ---- heart --------------------------------------------------------------------------------------------


def test_ibis_match_the_beats(brief_sim):
    truth = brief_sim.truth
    for role, hr in (("therapist", None), ("client", None)):
        beats, ibi = truth.beat_times_s[role], truth.ibi_ms[role]
        assert beats[0] >= 0 and beats[-1] < 600 and np.all(np.diff(beats) > 0)
        np.testing.assert_allclose(ibi, np.diff(beats) * 1000.0, rtol=0, atol=1e-9)
        assert 300 < ibi.min() and ibi.max() < 1500, role
        hr = truth.params[role].hr_bpm
        assert 60000.0 / ibi.mean() == pytest.approx(hr, abs=4.0), role
        # IBI at beat k is 60 / truth HR at that beat
        inner = beats[1:]
        hr_at = np.interp(inner, truth.t_grid_s, truth.hr_bpm[role])
        ok = (inner > 1.0) & (inner < 599.0)
        np.testing.assert_allclose(hr_at[ok], 60000.0 / ibi[ok], rtol=0.03)


def test_hr_from_ppg_peak_picking_matches_truth():
    sim = DyadSimulator(brief_config(seed=5))
    data = read_all(sim, [600.0])
    truth = sim.truth
    rate = 100.0
    for role in ("therapist", "client"):
        ppg = data[f"{role}/ppg"]
        ac = truth.params[role].ppg_ac_counts
        hp = sps.sosfiltfilt(sps.butter(2, 0.5, "highpass", fs=rate, output="sos"), ppg)
        peaks, _ = sps.find_peaks(hp, distance=int(0.33 * rate), prominence=0.5 * ac)
        # parabolic interpolation of each peak for sub-sample timing
        ym, y0, yp = hp[peaks - 1], hp[peaks], hp[peaks + 1]
        tp = (peaks + 0.5 * (ym - yp) / (ym - 2 * y0 + yp)) / rate
        true_pk = truth.pulse_peak_s[role]
        true_pk = true_pk[true_pk < 599.0]
        nearest = np.abs(tp[:, None] - true_pk[None, :]).min(axis=0)
        assert np.mean(nearest < 0.03) > 0.98, (role, np.mean(nearest < 0.03))
        assert abs(tp.size - true_pk.size) <= 3, (role, tp.size, true_pk.size)
        # pulse peaks arrive one pulse transit time after the beats
        hr_ppg = np.interp(truth.t_grid_s + truth.params[role].ptt_s, tp[1:], 60.0 / np.diff(tp))
        sel = (truth.t_grid_s > 5) & (truth.t_grid_s < 595)
        err = np.abs(hr_ppg[sel] - truth.hr_bpm[role][sel])
        assert np.median(err) < 0.5 and np.percentile(err, 95) < 2.0, (role, np.median(err))


def test_ppg_pulse_has_systolic_peak_and_dicrotic_notch():
    sim = DyadSimulator(SimConfig(seed=3, duration_s=60, ppg_noise_counts=0.0))
    truth = sim.truth
    for role in ("therapist", "client"):
        peaks = truth.pulse_peak_s[role]
        for p, nxt in zip(peaks[2:-2], peaks[3:-1], strict=True):
            t = np.arange(p - 0.05, nxt - 0.1, 0.002)
            v = sim.value_at(f"{role}/ppg", t)
            # the beat's maximum is the systolic peak, at the truth time
            assert abs(t[np.argmax(v)] - p) < 0.01
            mins, _ = sps.find_peaks(-v)
            maxs, _ = sps.find_peaks(v)
            late_max = maxs[t[maxs] > p + 0.1]
            assert mins.size and late_max.size, role  # notch followed by the diastolic wave
            assert t[mins[0]] < t[late_max[0]]


def test_ppg_polarity_can_be_inverted_like_a_raw_max30102():
    up = DyadSimulator(SimConfig(seed=3, duration_s=30, ppg_noise_counts=0.0))
    down = DyadSimulator(SimConfig(seed=3, duration_s=30, ppg_noise_counts=0.0, ppg_inverted=True))
    peaks = up.truth.pulse_peak_s["client"][2:-2]
    dc = up.truth.params["client"].ppg_dc_counts
    ac = up.truth.params["client"].ppg_ac_counts
    hi, lo = up.value_at("client/ppg", peaks), down.value_at("client/ppg", peaks)
    # the pulse (its amplitude +-5 % with breathing) adds in one and subtracts in the other
    assert np.all(hi - lo > 2 * 0.94 * ac) and np.all(hi - lo < 2 * 1.08 * ac)
    assert np.all(np.abs(0.5 * (hi + lo) - dc) < 0.02 * dc)


def test_red_channel_carries_the_same_pulses_with_its_ratio_of_ratios():
    events = [SensorEvent("client/ppg", "contact_loss", 40.0, 50.0)]
    sim = DyadSimulator(SimConfig(seed=3, duration_s=120, ppg_noise_counts=0.0, events=events))
    assert set(sim.read(1.0)) == set(STREAMS)  # read() stays with the four streams
    for role in ("therapist", "client"):
        p = sim.truth.params[role]
        peaks = sim.truth.pulse_peak_s[role]
        peaks = peaks[(peaks > 2) & (peaks < 38)]
        feet = peaks - 0.25 * np.sqrt(np.diff(sim.truth.beat_times_s[role]).mean() / 0.857)
        ir_pk, ir_ft = sim.value_at(f"{role}/ppg", peaks), sim.value_at(f"{role}/ppg", feet)
        red_pk, red_ft = sim.value_at(f"{role}/ppg_red", peaks), sim.value_at(f"{role}/ppg_red", feet)
        assert np.all(red_pk > red_ft) and np.all(ir_pk > ir_ft)  # pulses at the same instants
        ratio = np.median(((red_pk - red_ft) / red_ft) / ((ir_pk - ir_ft) / ir_ft))
        assert ratio == pytest.approx(p.ppg_red_ratio, rel=0.05), role
        assert np.median(red_ft / ir_ft) == pytest.approx(0.7, rel=0.02)
    assert sim.value_at("client/ppg_red", 45.0) < 3000.0  # the same sensor lost contact
    assert sim.truth.event_mask("client/ppg_red", 45.0) and not sim.truth.event_mask("therapist/ppg_red", 45.0)


def test_rsa_tracks_the_configured_tone():
    est = {}
    for shift in (0.0, 1.0):
        sim = DyadSimulator(SimConfig(seed=6, duration_s=900, therapist_rsa_ln_ms2=7.0 + shift,
                                      client_rsa_ln_ms2=5.0 + shift, therapist_rsa_sd_ln=0.3,
                                      client_rsa_sd_ln=0.3))
        truth = sim.truth
        for role in ("therapist", "client"):
            beats = truth.beat_times_s[role]
            # Porges-Bohrer-like estimate: IBI series resampled at 4 Hz, 0.12-0.40 Hz, ln variance per epoch
            t4 = np.arange(beats[1], beats[-1], 0.25)
            ibi4 = CubicSpline(beats[1:], truth.ibi_ms[role])(t4)
            band = sps.sosfiltfilt(sps.butter(3, (0.12, 0.40), "bandpass", fs=4.0, output="sos"), ibi4)
            vals = []
            for s in truth.rsa_epoch_start_s[1:-1]:
                sel = (t4 >= s) & (t4 < s + 30.0)
                vals.append(np.log(np.var(band[sel])))
            vals = np.array(vals)
            true_vals = truth.rsa_ln_ms2[role][1:-1]
            assert abs(np.mean(vals - true_vals)) < 0.4, (role, shift, vals - true_vals)
            assert np.corrcoef(vals, true_vals)[0, 1] > 0.7, role  # epoch-to-epoch changes are tracked too
            est[role, shift] = vals.mean()
    assert est["therapist", 0.0] - est["client", 0.0] == pytest.approx(2.0, abs=0.4)
    for role in ("therapist", "client"):
        assert est[role, 1.0] - est[role, 0.0] == pytest.approx(1.0, abs=0.3)


def test_breathing_stays_in_band(brief_sim):
    for role in ("therapist", "client"):
        r = brief_sim.truth.resp_hz[role]
        assert 0.15 <= r.min() and r.max() <= 0.4


# ---- coupling -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("feature", ["arousal", "eda_us", "hr_drive", "hr_bpm"])
def test_lagged_correlation_recovers_leader_and_lag(brief_sim, feature):
    truth = brief_sim.truth
    max_lag = int(10 * GRID_HZ)
    eda_like = feature in ("arousal", "eda_us")
    # therapist_led (both channels), lag 3 s: peak at +3 s
    lags, r = lagged_r(*segment_feature(truth, feature, 120, 300), max_lag)
    # the heart-rate driver stays below the respiratory band (0.01-0.1 Hz), so in a 3-min segment its peak is
    # less sharp (over 20 seeds: EDA features always within 0.25 s, HR features within ~1 s); see the long test
    tol = 0.25 if eda_like else 1.0
    assert abs(lags[np.argmax(r)] / GRID_HZ - 3.0) <= tol, (feature, lags[np.argmax(r)] / GRID_HZ)
    assert r.max() > (0.4 if feature == "eda_us" else 0.6)
    # client_led on the EDA channel, lag 2 s: peak at -2 s
    if eda_like:
        lags, r = lagged_r(*segment_feature(truth, feature, 300, 420), max_lag)
        assert abs(lags[np.argmax(r)] / GRID_HZ + 2.0) <= 0.25, feature
        assert r.max() > 0.4
    # anti_phase on the HR channel: strongly negative r near lag 0
    else:
        lags, r = lagged_r(*segment_feature(truth, feature, 420, 600), max_lag)
        assert r.min() < -0.6 and abs(lags[np.argmin(r)]) / GRID_HZ <= 0.5, feature
        assert r[max_lag] < -0.6


@pytest.mark.parametrize("mode", ["therapist_led", "client_led"])
def test_heart_rate_lag_is_precise_over_a_long_segment(mode):
    sim = DyadSimulator(SimConfig(seed=14, duration_s=1800, schedule=[
        Segment(0, 1800, mode, lag_s=2.5, gain=0.8, channel="hr")]))
    expected = 2.5 if mode == "therapist_led" else -2.5
    for feature in ("hr_drive", "hr_bpm"):
        lags, r = lagged_r(*segment_feature(sim.truth, feature, 0, 1800), int(10 * GRID_HZ))
        assert abs(lags[np.argmax(r)] / GRID_HZ - expected) <= 0.5, (feature, lags[np.argmax(r)] / GRID_HZ)
        assert r.max() > 0.6


@pytest.mark.parametrize("feature", ["arousal", "eda_us", "hr_drive", "hr_bpm"])
def test_uncoupled_and_uncoupled_channels_stay_near_zero(feature):
    eda_like = feature in ("arousal", "eda_us")
    sim = DyadSimulator(SimConfig(seed=8, duration_s=1500, schedule=[
        Segment(0, 1500, "therapist_led", lag_s=2.0, gain=0.8, channel="hr" if eda_like else "eda")]))
    lags, r = lagged_r(*segment_feature(sim.truth, feature, 0, 1500), int(10 * GRID_HZ))
    assert np.max(np.abs(r)) < 0.3, (feature, np.max(np.abs(r)))
    other = "hr_drive" if eda_like else "arousal"
    lags, r = lagged_r(*segment_feature(sim.truth, other, 0, 1500), int(10 * GRID_HZ))
    assert r.max() > 0.6 and lags[np.argmax(r)] / GRID_HZ == pytest.approx(2.0, abs=0.25)


def test_in_phase_segment_correlates_at_zero_lag():
    sim = DyadSimulator(SimConfig(seed=9, duration_s=400, schedule=[Segment(0, 400, "in_phase", gain=0.8)]))
    for feature in ("arousal", "hr_drive"):
        lags, r = lagged_r(*segment_feature(sim.truth, feature, 0, 400), 40)
        assert abs(lags[np.argmax(r)]) <= 2 and r[lags == 0][0] > 0.6, feature
        assert r[lags == 0][0] > r.max() - 0.05


def test_truth_segments_fill_gaps_and_give_expected_tau():
    sim = DyadSimulator(SimConfig(seed=1, duration_s=300, schedule=[
        Segment(30, 100, "therapist_led", lag_s=3.0), Segment(150, 200, "client_led", lag_s=1.5),
        Segment(200, 250, "anti_phase")]))
    segs = sim.truth.segments
    assert [(s.start_s, s.end_s, s.mode) for s in segs] == [
        (0, 30, "uncoupled"), (30, 100, "therapist_led"), (100, 150, "uncoupled"), (150, 200, "client_led"),
        (200, 250, "anti_phase"), (250, 300, "uncoupled")]
    assert [s.expected_tau_s for s in segs] == [None, 3.0, None, -1.5, 0.0, None]
    assert sim.truth.segment_at(160.0).mode == "client_led"
    assert [s.gain_eff for s in segs] == [0.0, 0.8, 0.0, 0.8, 0.8, 0.0]
    assert [s.expected_sign for s in segs] == [0, 1, 0, 1, -1, 0]
    assert segs[1].couples("eda") and segs[1].couples("hr") and not segs[0].couples("eda")
    assert sim.truth.feature("client/hr") is sim.truth.hr_bpm["client"]
    assert sim.truth.feature("therapist/eda") is sim.truth.eda_us["therapist"]
    with pytest.raises(SimulatorError, match="unknown feature"):
        sim.truth.feature("client/ppg")


# ---- the research hypothesis knob --------------------------------------------------------------------------


def coupling_r(sim: DyadSimulator) -> float:
    lags, r = lagged_r(*segment_feature(sim.truth, "arousal", 0, sim.config.duration_s), 40)
    return float(r[lags == 8][0])  # at the configured 2-s lag


def test_regulation_effect_off_keeps_gain_independent_of_therapist_regulation():
    kw = dict(seed=12, duration_s=900, schedule=[Segment(0, 900, "therapist_led", lag_s=2.0, gain=0.6)])
    regulated = DyadSimulator(SimConfig(therapist_rsa_ln_ms2=7.5, therapist_rsa_sd_ln=0.1, **kw))
    dysregulated = DyadSimulator(SimConfig(therapist_rsa_ln_ms2=4.5, therapist_rsa_sd_ln=0.5, **kw))
    assert regulated.truth.regulation_index > 1.0 > -1.0 > dysregulated.truth.regulation_index
    assert regulated.truth.segments[0].gain_eff == dysregulated.truth.segments[0].gain_eff == 0.6
    assert np.array_equal(regulated.truth.arousal["client"], dysregulated.truth.arousal["client"])


def test_regulation_effect_on_raises_coupling_with_therapist_regulation():
    kw = dict(seed=12, duration_s=900, regulation_effect=0.5,
              schedule=[Segment(0, 900, "therapist_led", lag_s=2.0, gain=0.6)])
    regulated = DyadSimulator(SimConfig(therapist_rsa_ln_ms2=7.5, therapist_rsa_sd_ln=0.1, **kw))
    dysregulated = DyadSimulator(SimConfig(therapist_rsa_ln_ms2=4.5, therapist_rsa_sd_ln=0.5, **kw))
    g_hi, g_lo = regulated.truth.segments[0].gain_eff, dysregulated.truth.segments[0].gain_eff
    assert g_hi > 0.75 and g_lo < 0.4
    assert coupling_r(regulated) > coupling_r(dysregulated) + 0.25
    # the therapist's realised RSA is what the index describes: higher level, steadier epochs
    r_hi, r_lo = regulated.truth.rsa_ln_ms2["therapist"], dysregulated.truth.rsa_ln_ms2["therapist"]
    assert r_hi.mean() > r_lo.mean() + 2.0 and r_hi.std() < r_lo.std()


# ---- sensor events ----------------------------------------------------------------------------------------


def test_contact_loss_saturation_and_motion_events():
    events = [SensorEvent("client/eda", "contact_loss", 100.0, 120.0),
              SensorEvent("therapist/eda", "saturation", 50.0, 55.0),
              SensorEvent("client/ppg", "contact_loss", 200.0, 210.0),
              SensorEvent("therapist/ppg", "saturation", 20.0, 22.0),
              SensorEvent("therapist/ppg", "motion", 150.0, 153.0)]
    clean = DyadSimulator(SimConfig(seed=2, duration_s=300))
    sim = DyadSimulator(SimConfig(seed=2, duration_s=300, events=events))
    a, b = read_all(clean, [300.0]), read_all(sim, [300.0])
    t32, t100 = np.arange(300 * 32) / 32.0, np.arange(300 * 100) / 100.0
    lost = (t32 >= 100.2) & (t32 < 119.8)
    assert np.all(b["client/eda"][lost] < 0.01)  # open circuit
    mask = sim.truth.event_mask("client/eda", t32)
    assert mask.sum() == 20 * 32 and not np.any(mask & (t32 < 100.0))
    assert np.array_equal(a["client/eda"][~mask], b["client/eda"][~mask])
    sat = (t32 >= 50.2) & (t32 < 54.8)
    assert np.all(b["therapist/eda"][sat] == 40.0)
    assert np.all(b["therapist/eda"] <= 40.0)
    ppg_lost = (t100 >= 200.2) & (t100 < 209.8)
    assert np.all(b["client/ppg"][ppg_lost] < 3000.0) and b["client/ppg"][ppg_lost].std() < 100.0
    ppg_sat = (t100 >= 20.2) & (t100 < 21.8)
    assert np.all(b["therapist/ppg"][ppg_sat] == 262143.0)
    motion = (t100 >= 150.5) & (t100 < 152.5)
    assert np.abs(b["therapist/ppg"][motion] - a["therapist/ppg"][motion]).max() > sim.truth.params[
        "therapist"].ppg_ac_counts
    assert sim.truth.event_mask("therapist/ppg", 151.0, kinds=("motion",))
    assert not sim.truth.event_mask("therapist/ppg", 151.0, kinds=("contact_loss",))
    # nothing else changed: the truth does not depend on the injected sensor faults
    assert np.array_equal(clean.truth.hr_bpm["client"], sim.truth.hr_bpm["client"])


def test_random_events_are_drawn_and_flagged():
    sim = DyadSimulator(SimConfig(seed=3, duration_s=3600, contact_loss_per_h=4.0, saturation_per_h=2.0,
                                  motion_per_min=0.5))
    kinds = [e.kind for e in sim.truth.events]
    assert kinds.count("contact_loss") > 4 and kinds.count("saturation") > 2 and kinds.count("motion") > 20
    assert all(e.stream.endswith("/ppg") for e in sim.truth.events if e.kind == "motion")
    ev = next(e for e in sim.truth.events if e.kind == "contact_loss" and e.stream.endswith("/eda")
              and e.end_s - e.start_s > 1.0)
    mid = 0.5 * (ev.start_s + ev.end_s)
    assert sim.value_at(ev.stream, mid) < 0.01
    assert DyadSimulator(SimConfig(seed=3, duration_s=600)).truth.events == ()


def therapist_rsa_epochs(truth: GroundTruth) -> np.ndarray:
    beats = truth.beat_times_s["therapist"]
    t4 = np.arange(beats[1], beats[-1], 0.25)
    ibi4 = CubicSpline(beats[1:], truth.ibi_ms["therapist"])(t4)
    band = sps.sosfiltfilt(sps.butter(3, (0.12, 0.40), "bandpass", fs=4.0, output="sos"), ibi4)
    return np.array([np.log(np.var(band[(t4 >= s) & (t4 < s + 30.0)])) for s in truth.rsa_epoch_start_s[1:-1]])


@pytest.mark.parametrize("effect", [0.0, 0.6])
def test_study_level_analysis_detects_the_hypothesis_only_when_on(effect):
    """Across sessions (therapist regulation drawn from the seed), measured therapist RSA level/stability
    predicts measured coupling strength only when ``regulation_effect`` is on."""
    reg, coupling = [], []
    for seed in range(24):
        sim = DyadSimulator(SimConfig(seed=100 + seed, duration_s=600, regulation_effect=effect,
                                      schedule=[Segment(0, 600, "therapist_led", lag_s=2.0, gain=0.5)]))
        rsa = therapist_rsa_epochs(sim.truth)
        reg.append((rsa.mean() - 6.0) / 0.7 - (rsa.std() - 0.3) / 0.12)
        lags, r = lagged_r(*segment_feature(sim.truth, "arousal", 0, 600), 40)
        coupling.append(np.arctanh(r[lags == 8][0]))
    rho = np.corrcoef(reg, coupling)[0, 1]
    if effect:
        assert rho > 0.6, rho
    else:
        assert abs(rho) < 0.45, rho


def lagged_rsa_coupling(truth: GroundTruth) -> tuple[float, float]:
    """OLS RSA_C(e) ~ 1 + RSA_C(e-1) + RSA_T(e-1) on the truth epochs: (coefficient of RSA_T(e-1), its t)."""
    t_rsa, c_rsa = truth.rsa_ln_ms2["therapist"], truth.rsa_ln_ms2["client"]
    x = np.column_stack([np.ones(c_rsa.size - 1), c_rsa[:-1], t_rsa[:-1]])
    y = c_rsa[1:]
    b, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ b
    se = np.sqrt(np.diag(resid @ resid / (y.size - 3) * np.linalg.inv(x.T @ x)))
    return float(b[2]), float(b[2] / se[2])


@pytest.mark.parametrize("beta", [0.0, -0.6])
def test_epoch_lagged_rsa_coupling_knob(beta):
    sim = DyadSimulator(SimConfig(seed=1, duration_s=3600, rsa_coupling_t_to_c=beta, therapist_rsa_sd_ln=0.4,
                                  client_rsa_sd_ln=0.4))
    coef, t_value = lagged_rsa_coupling(sim.truth)
    if beta:
        assert coef < -0.3 and t_value < -3.0, (coef, t_value)
    else:
        assert abs(t_value) < 2.5, (coef, t_value)
    # the knob leaves the configured RSA level and variability in place
    c = sim.truth.rsa_ln_ms2["client"]
    assert abs(np.mean(c) - sim.truth.params["client"].rsa_ln_ms2) < 0.3 and 0.2 < np.std(c) < 0.6

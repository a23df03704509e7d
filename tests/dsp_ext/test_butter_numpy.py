"""The numpy Butterworth design (``dsp_ext.filters.butter_sos``) against ``scipy.signal.butter``.

scipy is the reference here only: the unit's run-time path designs its filters without it. Responses must
agree to rounding for many orders, cut-offs and rates; coefficients must agree where the section pairing is
unambiguous (even orders, band-passes); the streams built on the designs must give the same numbers as with
scipy's designs (within 1e-9 relative).
"""

import numpy as np
import pytest
from scipy import signal

from dsp_ext import eda, filters, hrv, ppg
from dsp_ext.errors import DspError
from dsp_ext.filters import SosFilter, butter_sos, sosfilt_zi

RATES_HZ = (2.0, 4.0, 32.0, 75.0, 100.0, 250.0, 1000.0)
FRACTIONS = (0.003, 0.02, 0.1, 0.25, 0.4, 0.49)  # cut-off as a fraction of the rate


def _cases():
    for order in range(1, 9):
        for rate in RATES_HZ:
            for f in FRACTIONS:
                fc = f * rate
                yield order, fc, rate, "low"
                yield order, fc, rate, "high"
                hi = min(fc * 2.5, 0.495 * rate)
                if hi > fc * 1.01:
                    yield order, (fc, hi), rate, "bandpass"


CASES = list(_cases())


def _scipy_sos(order, cut, rate, btype):
    return signal.butter(order, cut, btype=btype, fs=rate, output="sos")


def test_many_designs_have_scipys_frequency_response():
    worst = 0.0
    for order, cut, rate, btype in CASES:
        ours = butter_sos(order, cut, rate, btype)
        ref = _scipy_sos(order, cut, rate, btype)
        assert ours.shape == ref.shape, (order, cut, rate, btype)
        assert ours.flags.c_contiguous and ours.dtype == np.float64
        assert np.all(ours[:, 3] == 1.0)
        _, h_ours = signal.sosfreqz(ours, worN=1024, fs=rate)
        _, h_ref = signal.sosfreqz(ref, worN=1024, fs=rate)
        err = float(np.max(np.abs(h_ours - h_ref)))
        worst = max(worst, err)
        assert err < 1e-9, (order, cut, rate, btype, err)
    assert len(CASES) > 300
    assert worst < 1e-9


@pytest.mark.parametrize("order", [2, 4, 6, 8])
@pytest.mark.parametrize("rate", [4.0, 32.0, 100.0])
def test_even_order_coefficients_equal_scipys(order, rate):
    for f in FRACTIONS:
        for btype, cut in (("low", f * rate), ("high", f * rate)):
            np.testing.assert_allclose(butter_sos(order, cut, rate, btype), _scipy_sos(order, cut, rate, btype),
                                       rtol=1e-9, atol=1e-12 * 4**order)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_bandpass_coefficients_equal_scipys(order):
    for rate, band in ((100.0, (0.5, 8.0)), (2.0, (0.12, 0.40)), (75.0, (0.5, 8.0)), (1000.0, (1.0, 40.0))):
        ours = butter_sos(order, band, rate, "bandpass")
        ref = _scipy_sos(order, band, rate, "bandpass")
        scale = np.max(np.abs(ref), axis=1, keepdims=True)
        np.testing.assert_allclose(ours / scale, ref / scale, rtol=0, atol=1e-9)


def test_poles_and_gain_are_butterworth():
    """Independent of scipy: |H| = 1/sqrt(2) at the cut-off, 1 in the pass band, poles inside the circle."""
    for order, cut, rate, btype in CASES:
        sos = butter_sos(order, cut, rate, btype)
        poles = np.concatenate([np.roots(s[3:]) for s in sos])
        assert np.all(np.abs(poles) < 1.0)
        cuts = np.atleast_1d(cut)
        z = np.exp(2j * np.pi * cuts / rate)
        h = np.prod([(s[0] + s[1] / zz + s[2] / zz**2) / (1 + s[4] / zz + s[5] / zz**2)
                     for s in sos for zz in [z]], axis=0)
        np.testing.assert_allclose(np.abs(h), np.sqrt(0.5), rtol=1e-7)


def test_sosfilt_zi_equals_scipys():
    for order, cut, rate, btype in CASES[::7]:
        sos = butter_sos(order, cut, rate, btype)
        np.testing.assert_allclose(sosfilt_zi(sos), signal.sosfilt_zi(sos), rtol=1e-9, atol=1e-12)


PROJECT_DESIGNS = [  # the filters the unit runs: EDA low-pass, tonic, PPG band-pass, RSA band-pass
    (4, 3.0, 32.0, "low"),
    (2, 0.05, 4.0, "low"),
    (2, (0.5, 8.0), 100.0, "bandpass"),
    (2, (0.12, 0.40), 2.0, "bandpass"),
]


@pytest.mark.parametrize("design", PROJECT_DESIGNS)
@pytest.mark.parametrize("init", ["zero", "first"])
def test_filtering_equals_scipy_design(design, init):
    rng = np.random.default_rng(7)
    x = 100.0 + np.cumsum(rng.standard_normal(5000))
    x[[100, 101, 2000]] = np.nan
    ours = SosFilter(butter_sos(*design), init=init).process(x)
    ref_sos = np.ascontiguousarray(_scipy_sos(*design))
    f = SosFilter(ref_sos, init="zero")
    if init == "first":
        f.zi[:] = signal.sosfilt_zi(ref_sos) * x[0]
    ref = f.process(x)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    fin = np.isfinite(ref)
    scale = np.max(np.abs(ref[fin]))
    assert np.max(np.abs(ours[fin] - ref[fin])) <= 1e-9 * scale


def _scipy_butter_sos(order, cutoff_hz, rate_hz, btype="low"):
    return np.ascontiguousarray(_scipy_sos(order, cutoff_hz, rate_hz, btype))


def _scipy_zi(sos):
    return np.ascontiguousarray(signal.sosfilt_zi(sos))


def _close(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b))
    fin = np.isfinite(a)
    if fin.any():
        assert np.max(np.abs(a[fin] - b[fin])) <= 1e-9 * max(1.0, np.max(np.abs(b[fin])))


def _run_streams():
    rng = np.random.default_rng(3)
    n_s = 200
    t_e = np.arange(32 * n_s) / 32.0
    eda_us = 5.0 + 0.5 * np.sin(2 * np.pi * t_e / 40) + 0.01 * rng.standard_normal(len(t_e))
    eda_us[500:520] = np.nan
    t_p = np.arange(100 * n_s) / 100.0
    beat_hz = 1.1 + 0.1 * np.sin(2 * np.pi * 0.25 * t_p)
    ph = 2 * np.pi * np.cumsum(beat_hz) / 100.0
    counts = 20000 + 500 * np.maximum(np.sin(ph), 0) ** 3 + 5 * rng.standard_normal(len(t_p))
    fe = eda.EdaStream(32.0).push(eda_us)
    fp = ppg.PpgStream(100.0).push(counts)
    ep = hrv.HrvStream(epoch_s=30.0).push_features(fp)
    return fe, fp, ep


def test_streams_give_the_same_numbers_as_with_scipy_designs(monkeypatch):
    ours = _run_streams()
    for mod in (eda, ppg, hrv):
        monkeypatch.setattr(mod, "butter_sos", _scipy_butter_sos)
    monkeypatch.setattr(filters, "sosfilt_zi", _scipy_zi)
    ref = _run_streams()
    (fe, fp, ep), (re, rp, rh) = ours, ref
    for name in ("eda_us", "tonic_us", "phasic_us"):
        _close(getattr(fe, name), getattr(re, name))
    assert [(s.onset_index, s.peak_index) for s in fe.scr] == [(s.onset_index, s.peak_index) for s in re.scr]
    _close([s.amplitude_us for s in fe.scr], [s.amplitude_us for s in re.scr])
    for name in ("raw_beats", "beat_s", "ibi_ms", "hr_bpm", "ibi_grid_ms"):
        _close(getattr(fp, name), getattr(rp, name))
    assert len(ep) == len(rh) >= 5
    for a, b in zip(ep, rh, strict=True):
        _close([a.rmssd_ms, a.rsa_ln_ms2, a.hf_ln_ms2], [b.rmssd_ms, b.rsa_ln_ms2, b.hf_ln_ms2])


@pytest.mark.parametrize(
    "args",
    [
        (0, 1.0, 32.0, "low"),
        (2.5, 1.0, 32.0, "low"),
        (True, 1.0, 32.0, "low"),
        (2, 1.0, 32.0, "notch"),
        (2, (1.0, 2.0), 32.0, "low"),
        (2, 1.0, 32.0, "bandpass"),
        (2, (3.0, 2.0), 32.0, "bandpass"),
        (2, float("nan"), 32.0, "low"),
        (2, 16.0, 32.0, "high"),
        (2, 1.0, 0.0, "low"),
    ],
)
def test_bad_designs_raise(args):
    with pytest.raises(DspError):
        butter_sos(*args)

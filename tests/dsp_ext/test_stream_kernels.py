"""The fused raw-rate EDA kernel (``_sosfilt.eda_front``), the EDA grid-stage kernel (``_eda``) and the IBI
correction kernel (``_ibi``) against their plain twins, and the scalar fast paths of the streaming objects against their vectorised forms, on
adversarial input."""

import numpy as np
import pytest

from dsp_ext import _eda, _sosfilt
from dsp_ext.eda import EdaStream, eda_front_reference, eda_grid_reference
from dsp_ext.errors import DspError
from dsp_ext.filters import butter_sos, sosfilt_zi
from dsp_ext.grid import GridResampler
from dsp_ext.ppg import NORMAL, IbiCorrector, IbiCorrectorReference

from .conftest import KINDS, adversarial


def _adversarial(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = 5.0 + np.cumsum(rng.standard_normal(n)) * 0.01
    kinds = rng.integers(0, 8, size=n)
    x[kinds == 1] = np.nan
    x[(kinds == 2) & (rng.random(n) < 0.3)] = np.inf
    x[(kinds == 3) & (rng.random(n) < 0.3)] = -np.inf
    x[(kinds == 4) & (rng.random(n) < 0.3)] = 100.0  # above max_us
    x[(kinds == 5) & (rng.random(n) < 0.3)] = 0.01  # below min_us
    x[(kinds == 6) & (rng.random(n) < 0.3)] += 2.0  # slope spike
    if n > 40:
        x[10:30] = 7.0  # a constant run
        x[:3] = np.nan  # no finite input at the start
    contact = rng.random(n) > 0.02
    return x, contact


@pytest.mark.parametrize("seed", range(12))
def test_eda_front_kernel_equals_numpy_twin_for_any_chunking(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 2000))
    x, contact = _adversarial(rng, n)
    use_contact = seed % 2 == 0
    sos = butter_sos(4, 3.0, 32.0)
    guard_n = int(rng.integers(0, 20))
    ref, n_bad_ref = eda_front_reference(x, contact if use_contact else None, sos, 32.0, guard_n=guard_n)
    x_before = x.copy()
    zi = np.zeros((len(sos), 2))
    st = np.array([np.nan, -1e12, 0.0, 0.0, np.nan])
    cuts = np.sort(rng.integers(0, max(n, 1), size=int(rng.integers(0, 30))))
    outs, n_bad = [], 0
    for xs, cs in zip(np.split(x, cuts), np.split(contact, cuts), strict=True):
        out = np.empty(len(xs))
        c = cs.astype(np.uint8) if use_contact else np.empty(0, dtype=np.uint8)
        n_bad += _sosfilt.eda_front(np.ascontiguousarray(xs), c, out, sos, zi, sosfilt_zi(sos), st,
                                    0.05, 60.0, 10.0, 32.0, guard_n)
        outs.append(out)
    got = np.concatenate(outs) if outs else np.empty(0)
    assert np.array_equal(x, x_before, equal_nan=True)  # input never mutated
    assert n_bad == n_bad_ref
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    fin = np.isfinite(ref)
    if fin.any():
        assert np.max(np.abs(got[fin] - ref[fin])) <= 1e-9
    if n > 40:
        assert np.isnan(got[:3]).all()


def test_eda_stream_does_not_mutate_input_and_accepts_other_dtypes():
    x = (5.0 + 0.01 * np.arange(64)).astype(np.float32)
    keep = x.copy()
    a = EdaStream(32.0).push(x[::1])
    b = EdaStream(32.0).push(x.astype(np.float64)[::-1][::-1].copy())
    assert np.array_equal(x, keep)
    np.testing.assert_array_equal(a.eda_us, b.eda_us)
    y = np.repeat(5.0 + 0.01 * np.arange(64), 2)[::2]  # non-contiguous view
    c = EdaStream(32.0).push(y)
    np.testing.assert_array_equal(c.eda_us, EdaStream(32.0).push(np.ascontiguousarray(y)).eda_us)


@pytest.mark.parametrize("rate_hz", [1.0, 2.0, 3.0, 7.5, 32.0, 100.0])
@pytest.mark.parametrize("t0_ns", [None, 1_700_000_000_123_456_789])
def test_grid_scalar_path_equals_vector_path(rate_hz, t0_ns):
    rng = np.random.default_rng(int(rate_hz * 10))
    x = rng.standard_normal(int(rate_hz * 200))
    x[rng.random(len(x)) < 0.05] = np.nan
    whole = GridResampler(rate_hz, t0_ns=t0_ns).push(x)  # many points: vectorised
    g = GridResampler(rate_hz, t0_ns=t0_ns)
    cuts = np.sort(rng.integers(0, len(x), size=len(x) // 3))
    parts = [g.push(p) for p in np.split(x, cuts)]  # a few points per push: scalar
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1])


def _adversarial_beats(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    """Raw beat times (s) of ``n`` intervals: 0 regular with noise, 1 constant, 2 chaotic (250–2500 ms),
    3 halved/doubled/tripled intervals, 4 an offset of 1e6 s, 5 ties and near-ties of intervals; then extra
    beats inserted, beats dropped and early (ectopic-like) beats."""
    rr = 850 + 40 * np.sin(np.arange(n) * 2 * np.pi / 5) + rng.normal(0, 10, n)
    if kind == 1:
        rr = np.full(n, 800.0)
    elif kind == 2:
        rr = rng.uniform(250, 2500, n)
    elif kind == 3:
        sel = rng.random(n) < 0.1
        rr[sel] *= rng.choice([0.4, 0.5, 2.0, 3.0], size=sel.sum())
    elif kind == 5:
        rr = rng.choice([800.0, 800.0 + 1e-9, 820.0, 1600.0], size=n)
    beats = np.concatenate(([0.0], np.cumsum(rr) / 1000.0))
    if kind == 4:
        beats = beats + 1e6
    extra = rng.random(len(beats)) < 0.05
    beats = np.sort(np.concatenate((beats, beats[extra] + rng.uniform(0.2, 0.5, extra.sum()))))
    beats = beats[rng.random(len(beats)) > 0.05]
    if len(beats) and rng.random() < 0.5:
        beats[rng.integers(0, len(beats), 5)] -= 0.25
    return np.sort(beats)


def _run_corrector(c: object, beats: np.ndarray, cuts: np.ndarray, stride: bool) -> tuple[np.ndarray, ...]:
    outs = []
    for part in np.split(beats, cuts):
        if stride:  # a non-contiguous view of the same values
            part = np.repeat(part, 2)[::2]
        outs.append(c.push(part))  # type: ignore[attr-defined]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


@pytest.mark.parametrize("seed", range(60))
def test_ibi_kernel_equals_python_twin_for_any_chunking(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([0, 1, 2, 3, 4, 5, 10, 90, 91, 92, 100, 300, 700]))
    kind = seed % 6
    beats = _adversarial_beats(rng, n, kind)
    before = beats.copy()
    cuts = np.sort(rng.integers(0, len(beats) + 1, size=int(rng.integers(0, 40))))
    keep = int(rng.choice([91, 92, 99, 150]))
    fast = IbiCorrector(keep)
    ref = IbiCorrectorReference(keep)
    t1, k1 = _run_corrector(fast, beats, cuts, stride=seed % 3 == 0)
    t2, k2 = _run_corrector(ref, beats, cuts, stride=False)
    msg = f"seed={seed} n={n} kind={kind} keep={keep} cuts={cuts.tolist()}"
    assert np.array_equal(beats, before), msg  # input never mutated
    np.testing.assert_array_equal(k1, k2, err_msg=msg)
    assert fast.n_corrected == ref.n_corrected, msg
    assert len(t1) == len(t2), msg
    if len(t1):
        assert np.max(np.abs(t1 - t2)) <= 1e-9, msg
    assert len(fast._raw) == len(ref._raw), msg
    # a reset starts again from nothing: the same run gives the same output
    fast.reset()
    t3, k3 = _run_corrector(fast, beats, cuts, stride=False)
    np.testing.assert_array_equal(t3, t1, err_msg=msg)
    np.testing.assert_array_equal(k3, k1, err_msg=msg)


def test_ibi_kernel_corrects_something_in_the_adversarial_set():
    """Guard against a vacuous twin test: the generator must make every kind of correction happen."""
    kinds = set()
    for seed in range(60):
        rng = np.random.default_rng(seed)
        beats = _adversarial_beats(rng, 300, seed % 6)
        kinds |= set(IbiCorrector().push(beats)[1].tolist())
    assert kinds >= {0, 1, 2, 3, 4, 5}, kinds


def test_ibi_corrector_input_checks():
    c = IbiCorrector()
    with pytest.raises(DspError):
        c.push(np.array([0.0, np.nan, 2.0]))
    with pytest.raises(DspError):
        c.push(np.array([0.0, np.inf]))
    with pytest.raises(DspError):
        c.push(np.ones((2, 2)))
    with pytest.raises(DspError):
        IbiCorrector(keep=10)
    # a rejected push leaves the state untouched; ints are accepted
    t, k = c.push(np.arange(5))
    assert t.tolist() == [0.0, 1.0, 2.0] and k.tolist() == [NORMAL] * 3
    assert c.push(np.empty(0))[0].shape == (0,)


def test_filter_kernels_check_array_headers():
    """The kernels take ndarrays without typed memoryviews: dtype, shape, contiguity and writability are
    checked on the header, and a bad argument raises instead of reading or writing out of bounds."""
    sos = butter_sos(4, 0.5, 4.0)  # two sections
    zi, x, out, hold = np.zeros((len(sos), 2)), np.ones(6), np.empty(6), np.array([np.nan])
    _sosfilt.sosfilt_hold(sos, zi, x, out, hold)
    assert np.isfinite(out).all() and hold[0] == 1.0
    ro = zi.copy()
    ro.flags.writeable = False
    bad = [
        (sos, zi, x, np.empty(5), hold),  # out too short
        (sos, zi[:1], x, out, hold),  # state of the wrong number of sections
        (sos, zi, x.astype(np.float32), out, hold),  # dtype
        (sos, zi, np.ones(12)[::2], out, hold),  # not contiguous
        (sos, ro, x, out, hold),  # read-only state
        (sos[:, :5].copy(), zi, x, out, hold),  # not 6 coefficients per section
        (sos, zi, x, out, np.empty(0)),  # no hold slot
    ]
    for args in bad:
        with pytest.raises(ValueError):
            _sosfilt.sosfilt_hold(*args)
    st = np.array([np.nan, -1e12, 0.0, 0.0, np.nan])
    zu = sosfilt_zi(sos)
    with pytest.raises(ValueError):  # contact flags of another length than the samples
        _sosfilt.eda_front(x, np.ones(5, dtype=np.uint8), out, sos, zi, zu, st, 0.05, 60.0, 10.0, 32.0, 4)
    with pytest.raises(ValueError):  # contact flags must be uint8
        _sosfilt.eda_front(x, np.ones(6, dtype=bool), out, sos, zi, zu, st, 0.05, 60.0, 10.0, 32.0, 4)
    with pytest.raises(ValueError):  # state vector of 5 values
        _sosfilt.eda_front(x, np.empty(0, dtype=np.uint8), out, sos, zi, zu, st[:4].copy(), 0.05, 60.0, 10.0,
                           32.0, 4)
    assert _sosfilt.eda_front(x, np.empty(0, dtype=np.uint8), out, sos, zi, zu, st, 0.05, 60.0, 10.0, 32.0, 4) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rate_hz", [1.0, 3.0, 7.5, 32.0, 100.0])
def test_eda_grid_kernel_equals_python_twin_for_any_chunking(kind, rate_hz):
    """Resampling to the 4 Hz grid, tonic/phasic split and SCR state machine (``_eda.EdaGridKernel``, pushed in
    random chunks) against ``eda_grid_reference`` on the whole record."""
    rng = np.random.default_rng(int(rate_hz * 10) + KINDS.index(kind))
    n = int(rng.choice([0, 1, 2, 5, int(rate_hz * 60), int(rate_hz * 200)]))
    y = 5.0 + 0.3 * adversarial(rng, n, kind)
    if kind == "walk" and n > 40:  # responses: a few fast rises of 0.1–0.5 µS
        for at in rng.integers(0, n - 20, size=4):
            y[at : at + int(rate_hz * 3) + 1] += np.linspace(0.0, rng.uniform(0.1, 0.5), int(rate_hz * 3) + 1)
    y = np.ascontiguousarray(y)
    before = y.copy()
    t0_ns = None if rng.random() < 0.5 else 1_700_000_000_123_456_789
    stream = EdaStream(rate_hz if rate_hz > 6.0 else 7.0, t0_ns=t0_ns)  # only for its settings
    tonic_sos = stream._tonic_sos
    g = GridResampler(rate_hz, t0_ns=t0_ns)
    kern = _eda.EdaGridKernel(g._off, g._step, g.clock.first_index, tonic_sos, sosfilt_zi(tonic_sos),
                              stream.scr_onset_step_us, stream.scr_min_amp_us, stream.scr_max_rise)
    cuts = np.sort(rng.integers(0, n + 1, size=int(rng.integers(0, max(2, n // 3)))))
    parts = [kern.push(np.ascontiguousarray(p)) for p in np.split(y, cuts)]
    got = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    got_scr = [e for p in parts for e in p[5]]
    with np.errstate(invalid="ignore"):  # inf − inf in the twin's vectorised interpolation
        ref = eda_grid_reference(y, rate_hz, tonic_sos, t0_ns, stream.scr_onset_step_us,
                                 stream.scr_min_amp_us, stream.scr_max_rise)
    msg = f"kind={kind} rate_hz={rate_hz} n={n} t0_ns={t0_ns} cuts={cuts.tolist()}"
    assert np.array_equal(y, before, equal_nan=True), msg  # input never mutated
    np.testing.assert_array_equal(got[0], ref[0], err_msg=msg)
    np.testing.assert_array_equal(got[4], ref[4], err_msg=msg)
    for a, b, name in zip(got[1:4], ref[1:4], ("value", "tonic", "phasic"), strict=True):
        assert np.array_equal(np.isfinite(a), np.isfinite(b)), f"{msg} {name}"
        assert np.array_equal(a[~np.isfinite(a)], b[~np.isfinite(b)], equal_nan=True), f"{msg} {name}"
        fin = np.isfinite(a)
        if fin.any():  # 1e-9 in µS, relative above 1 µS (the +1e9 offsets)
            assert np.max(np.abs(a[fin] - b[fin]) / np.maximum(1.0, np.abs(b[fin]))) <= 1e-9, f"{msg} {name}"
    assert got_scr == ref[5], msg


def test_eda_grid_kernel_finds_responses():
    """Guard against a vacuous twin test: the stream reports the responses of a signal that has them."""
    t = np.arange(32 * 120) / 32.0
    x = 5.0 + sum(0.3 * np.clip((t - on) / 2.0, 0, 1) * np.exp(-np.clip(t - on - 2.0, 0, None) / 6.0)
                  for on in (20.0, 60.0, 95.0))
    s = EdaStream(32.0)
    scr = [e for part in np.array_split(x, 120) for e in s.push(part).scr]
    assert len(scr) == 3 and all(0.2 < e.amplitude_us < 0.35 for e in scr), scr


@pytest.mark.parametrize("kind", KINDS)
def test_elgendi_kernel_equals_numpy_twin(kind):
    """The Cython Elgendi detector (pushed in random chunks) against ``dsp_ext.ppg.elgendi_reference`` on the
    whole record: the same beats (to 1e-9 samples) decided at the same samples, on adversarial band-passed
    signals (pulses plus each adversarial kind) and at every short length; inputs never mutated."""
    from dsp_ext import _ppg
    from dsp_ext.ppg import elgendi_reference

    rng = np.random.default_rng(sum(map(ord, kind)))
    n_beats = 0
    for rate in (25.0, 64.0, 100.0):
        for n in (0, 1, 2, 17, 70, 700, 6000):
            t = np.arange(n) / rate
            pulse = 500.0 * np.maximum(np.sin(2 * np.pi * 1.2 * t), 0.0) ** 3
            y = pulse + 40.0 * adversarial(rng, n, kind)
            y0 = y.copy()
            want_b, want_d = elgendi_reference(y, rate)
            det = _ppg.ElgendiDetector(rate)
            cuts = np.unique(rng.integers(0, max(1, n), size=int(rng.integers(0, 30))))
            got = [det.push_decided(np.ascontiguousarray(part)) for part in np.split(y, cuts)]
            got_b = np.concatenate([b for b, _ in got])
            got_d = np.concatenate([d for _, d in got])
            np.testing.assert_array_equal(got_d, want_d)
            assert got_b.shape == want_b.shape and (got_b.size == 0 or np.max(np.abs(got_b - want_b)) <= 1e-9)
            np.testing.assert_array_equal(y, y0)
            n_beats += got_b.size
    if kind not in ("constant", "mostly_nan", "offset"):  # (a 4e10 offset leaves no beat above the level)
        assert n_beats > 50, n_beats  # the comparison saw beats

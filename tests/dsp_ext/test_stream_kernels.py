"""The fused raw-rate EDA kernel (``_sosfilt.eda_front``) against its numpy twin, and the scalar fast paths
of the streaming objects against their vectorised forms, on adversarial input."""

import numpy as np
import pytest

from dsp_ext import _sosfilt
from dsp_ext.eda import EdaStream, eda_front_reference
from dsp_ext.filters import butter_sos, sosfilt_zi
from dsp_ext.grid import GridResampler


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

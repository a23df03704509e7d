"""Streaming SOS filters: kernel == plain reference == scipy, any chunking == batch, NaN hold, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from dsp_ext.errors import DspError
from dsp_ext.filters import SosFilter, butter_sos, sosfilt, sosfilt_reference
from dsp_ext.grid import GridResampler

from .conftest import KINDS, adversarial

DESIGNS = [
    (4, 3.0, 32.0, "low"),
    (2, (0.5, 8.0), 100.0, "bandpass"),
    (1, 0.05, 4.0, "low"),
    (3, 1.0, 75.0, "high"),
]


@pytest.mark.parametrize("design", DESIGNS, ids=lambda d: f"{d[0]}-{d[3]}-{d[2]}")
def test_kernel_equals_reference_adversarial(design):
    sos = butter_sos(*design)
    rng = np.random.default_rng(int(design[2]))
    for n in (0, 1, 2, 7, 300):
        for kind in KINDS:
            x = adversarial(rng, n, kind)
            x_copy = x.copy()
            got = sosfilt(sos, x)
            exp = sosfilt_reference(sos, x)
            ctx = f"design={design} n={n} kind={kind}"
            np.testing.assert_array_equal(np.isnan(got), np.isnan(exp), err_msg=ctx)
            scale = max(1.0, float(np.nanmax(np.abs(np.where(np.isfinite(x), x, 0.0)), initial=0.0)))
            np.testing.assert_allclose(got, exp, rtol=0, atol=1e-9 * scale, equal_nan=True, err_msg=ctx)
            np.testing.assert_array_equal(x, x_copy, err_msg=ctx)


@pytest.mark.parametrize("design", DESIGNS, ids=lambda d: f"{d[0]}-{d[3]}-{d[2]}")
def test_equals_scipy_on_finite_input(design):
    sos = butter_sos(*design)
    x = np.random.default_rng(1).standard_normal(500) + 3.0
    np.testing.assert_allclose(sosfilt(sos, x), signal.sosfilt(sos, x), rtol=0, atol=1e-12)
    zi = signal.sosfilt_zi(sos) * x[0]
    np.testing.assert_allclose(sosfilt(sos, x, init="first"), signal.sosfilt(sos, x, zi=zi)[0], atol=1e-12)


def test_any_chunking_equals_batch():
    sos = butter_sos(4, 3.0, 32.0)
    rng = np.random.default_rng(2)
    x = np.cumsum(rng.standard_normal(2000)) + 10.0
    x[500:520] = np.nan
    batch = sosfilt(sos, x, init="first")
    for _ in range(5):
        f = SosFilter(sos, init="first")
        cuts = np.sort(rng.integers(0, len(x), size=int(rng.integers(1, 40))))
        parts = [f.process(p) for p in np.split(x, cuts)]
        np.testing.assert_array_equal(np.concatenate(parts), batch)
    f.reset()
    np.testing.assert_array_equal(f.process(x), batch)


def test_nan_hold_keeps_state_finite():
    sos = butter_sos(2, 1.0, 32.0)
    x = np.full(400, 5.0)
    x[100:150] = np.nan
    y = sosfilt(sos, x, init="first")
    assert np.all(np.isnan(y[100:150]))
    np.testing.assert_allclose(y[150:], 5.0, atol=1e-9)  # held input = 5: no transient after the gap
    y0 = sosfilt(sos, np.concatenate(([np.nan, np.inf], x[:10])), init="first")
    assert np.isnan(y0[:2]).all() and np.allclose(y0[2:], 5.0)


def test_bad_filter_input():
    with pytest.raises(DspError):
        butter_sos(2, 20.0, 32.0)
    with pytest.raises(DspError):
        SosFilter(np.ones((2, 5)))
    bad = butter_sos(2, 1.0, 32.0)
    bad[0, 3] = 2.0
    with pytest.raises(DspError, match="a0"):
        SosFilter(bad)
    with pytest.raises(DspError, match="init"):
        SosFilter(butter_sos(2, 1.0, 32.0), init="steady")
    with pytest.raises(DspError, match="1-D"):
        SosFilter(butter_sos(2, 1.0, 32.0)).process(np.ones((3, 3)))


@pytest.mark.parametrize("rate_hz", [4.0, 32.0, 75.0, 100.0, 117.3, 1000.0])
def test_grid_resampler_is_linear_interpolation_and_chunk_invariant(rate_hz):
    rng = np.random.default_rng(int(rate_hz))
    n = int(rate_hz * 20) + 3
    x = rng.standard_normal(n)
    k, v = GridResampler(rate_hz).push(x)
    tk = k / 4.0
    assert tk[-1] <= (n - 1) / rate_hz < tk[-1] + 0.25 + 1e-9
    np.testing.assert_allclose(v, np.interp(tk, np.arange(n) / rate_hz, x), atol=1e-12)
    g = GridResampler(rate_hz)
    parts = [g.push(p) for p in np.array_split(x, 17)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), k)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), v, atol=1e-15)

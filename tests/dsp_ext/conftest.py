"""Shared generators for the dsp_ext tests: adversarial series and simulated coupled dyads."""

from __future__ import annotations

import numpy as np
import pytest

KINDS = ("noise", "walk", "nan_runs", "inf", "const_runs", "offset", "mostly_nan", "constant", "steps")


def adversarial(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """A series of ``n`` samples meant to break numerics; non-contiguous half the time."""
    base = rng.standard_normal(2 * n)
    if n == 0:
        return base
    if kind == "walk":
        base = np.cumsum(base) * 0.3
    elif kind == "nan_runs":
        for _ in range(max(1, n // 8)):
            s = int(rng.integers(0, max(1, 2 * n)))
            base[s : s + int(rng.integers(1, 6))] = np.nan
    elif kind == "inf":
        idx = rng.integers(0, max(1, 2 * n), size=max(1, n // 10))
        base[idx] = rng.choice([np.inf, -np.inf, np.nan], size=len(idx))
    elif kind == "const_runs":
        for _ in range(max(1, n // 10)):
            s = int(rng.integers(0, max(1, 2 * n)))
            base[s : s + int(rng.integers(3, 30))] = float(rng.integers(-3, 4))
    elif kind == "offset":
        base = base + 1e9
    elif kind == "mostly_nan":
        base[rng.random(2 * n) < 0.55] = np.nan
    elif kind == "constant":
        base[:] = 7.25
    elif kind == "steps":
        base = np.repeat(rng.standard_normal(2 * n // 5 + 1) * 100.0, 5)[: 2 * n] + base
    if rng.random() < 0.5:
        return base[::2][:n]  # a strided view, not contiguous
    return np.ascontiguousarray(base[:n])


def coupled_pair(
    rng: np.random.Generator, n: int, lag_samples: int, coupling: float = 0.8, phi: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """AR(1) driver T and a follower C[t] = coupling * T[t - lag] + noise (lag < 0: the client leads)."""
    e = rng.standard_normal(n + abs(lag_samples) + 200)
    d = np.empty_like(e)
    d[0] = e[0]
    for i in range(1, len(e)):
        d[i] = phi * d[i - 1] + e[i]
    d = d[200:]
    noise = rng.standard_normal(n) * np.sqrt(1 - coupling**2) * d.std()
    a = abs(lag_samples)
    lead = d[a : a + n]
    follow = coupling * d[:n] + noise
    # follow[t] = coupling * lead[t - a] + noise
    if lag_samples >= 0:
        return lead, follow
    return follow, lead


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)

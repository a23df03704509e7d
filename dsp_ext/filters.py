"""Causal IIR filters in second-order sections with persistent state: streaming == batch for any chunking.

Designs (Butterworth) are computed once at set-up in plain numpy (no scipy on the unit's run-time path: scipy
alone costs ~70 MB of resident memory); the per-sample work is the Cython kernel ``_sosfilt.sosfilt_hold``.
Non-finite input samples give NaN output while the filter is fed the last finite input (zero-order hold), so
one bad sample cannot poison the state for ever.

The design follows the textbook route (e.g. Oppenheim & Schafer, *Discrete-Time Signal Processing*, 3rd ed.,
§7.1–7.2; Parks & Burrus, *Digital Filter Design*, 1987, ch. 7):

1. the analog low-pass prototype of order N has its poles evenly on the left half of the unit circle,
   ``s_k = exp(i·π·(2k + N + 1) / (2N))``, k = 0 … N−1, no zeros, unit gain;
2. the cut-off(s) are pre-warped, ``Ω = 2·fs·tan(π·f / fs)``, so that the bilinear transform puts them
   exactly at ``f``;
3. frequency transformation: low-pass ``s → s/Ω``; high-pass ``s → Ω/s`` (N zeros at s = 0);
   band-pass ``s → (s² + Ω₀²) / (B·s)`` with ``Ω₀ = √(Ω₁Ω₂)``, ``B = Ω₂ − Ω₁`` (each pole splits in two,
   N zeros at s = 0);
4. bilinear transform ``z = (2fs + s) / (2fs − s)``; zeros at infinity land at z = −1; the gain is fixed so
   that the pass-band gain is 1;
5. second-order sections: complex poles with their conjugates, real poles two by two; sections are
   ordered from the pole farthest from the unit circle to the nearest (the sharpest resonance last), each
   section's poles take the remaining zeros nearest to them, and the overall gain sits in the first section
   (Jackson, *Digital Filters and Signal Processing*, 3rd ed., §11.3, on pairing and ordering for low
   round-off noise).
"""

from __future__ import annotations

import numpy as np

from . import _sosfilt
from ._arrays import real_1d
from .errors import DspError

__all__ = ["SosFilter", "butter_sos", "sosfilt", "sosfilt_reference", "sosfilt_zi"]

_BTYPES = {"low": "low", "lowpass": "low", "high": "high", "highpass": "high", "band": "band",
           "bandpass": "band"}


def _butter_zpk(order: int, cuts_hz: np.ndarray, rate_hz: float, kind: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Digital zeros, poles and gain of a Butterworth filter (steps 1–4 of the module doc)."""
    fs2 = 2.0 * rate_hz
    warped = fs2 * np.tan(np.pi * cuts_hz / rate_hz)  # pre-warped analog cut-offs (rad/s)
    k = np.arange(order)
    proto = np.exp(1j * np.pi * (2 * k + order + 1) / (2 * order))  # left half plane, |s| = 1
    if kind == "low":
        p_a = warped[0] * proto
        z_a = np.empty(0, dtype=complex)
        gain = warped[0] ** order
    elif kind == "high":
        p_a = warped[0] / proto
        z_a = np.zeros(order, dtype=complex)
        gain = float(np.real(1.0 / np.prod(-proto)))
    else:
        w0 = np.sqrt(warped[0] * warped[1])
        bw = warped[1] - warped[0]
        half = proto * bw / 2.0
        root = np.sqrt(half * half - w0 * w0 + 0j)
        p_a = np.concatenate((half + root, half - root))
        z_a = np.zeros(order, dtype=complex)
        gain = bw**order
    # bilinear transform
    p_d = (fs2 + p_a) / (fs2 - p_a)
    z_d = np.concatenate(((fs2 + z_a) / (fs2 - z_a), -np.ones(len(p_a) - len(z_a))))
    gain_d = float(gain * np.real(np.prod(fs2 - z_a) / np.prod(fs2 - p_a)))
    return z_d, p_d, gain_d


def _zpk_to_sos(z: np.ndarray, p: np.ndarray, gain: float) -> np.ndarray:
    """Second-order sections from real-coefficient zeros and poles (step 5 of the module doc)."""
    tol = 1e-12
    upper = [q for q in p if q.imag > tol]
    real_p = sorted((q.real for q in p if abs(q.imag) <= tol), key=lambda r: -abs(r))
    groups: list[list[complex]] = [[q, q.conjugate()] for q in upper]
    groups += [[complex(a) for a in real_p[i : i + 2]] for i in range(0, len(real_p), 2)]
    groups.sort(key=lambda g: -max(abs(q) for q in g))  # nearest the unit circle first (to pick zeros)
    zeros = list(z)
    sections: list[np.ndarray] = []
    for g in groups:
        ref = g[0]
        mine: list[complex] = []
        while len(mine) < len(g) and zeros:
            # a complex zero comes with its conjugate; real zeros are taken one at a time
            j = int(np.argmin([abs(zz - ref) for zz in zeros]))
            zz = zeros.pop(j)
            mine.append(zz)
            if abs(zz.imag) > tol and len(mine) < 2:
                c = int(np.argmin([abs(z2 - zz.conjugate()) for z2 in zeros]))
                mine.append(zeros.pop(c))
        b = np.real(np.poly(mine)) if mine else np.ones(1)
        a = np.real(np.poly(g))
        sections.append(np.concatenate((np.pad(b, (0, 3 - len(b))), np.pad(a, (0, 3 - len(a))))))
    sos = np.array(sections[::-1], dtype=np.float64)  # farthest from the unit circle first
    sos[0, :3] *= gain
    return sos


def butter_sos(
    order: int, cutoff_hz: float | tuple[float, float], rate_hz: float, btype: str = "low"
) -> np.ndarray:
    """Butterworth design as an (n_sections, 6) float64 C-contiguous SOS array, computed in numpy once.

    ``btype`` is ``"low"``/``"lowpass"``, ``"high"``/``"highpass"`` or ``"band"``/``"bandpass"`` (then
    ``cutoff_hz`` is ``(low, high)``); a band-pass of order N has N sections, as in ``scipy.signal.butter``.
    """
    if not rate_hz > 0:
        raise DspError(f"rate_hz must be > 0, got {rate_hz!r}")
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1:
        raise DspError(f"order must be an integer >= 1, got {order!r}")
    kind = _BTYPES.get(btype)
    if kind is None:
        raise DspError(f"btype must be one of {sorted(_BTYPES)}, got {btype!r}")
    nyq = rate_hz / 2.0
    cuts = np.atleast_1d(np.asarray(cutoff_hz, dtype=np.float64))
    if np.any(~np.isfinite(cuts)) or np.any(cuts <= 0) or np.any(cuts >= nyq):
        raise DspError(f"cut-off {cutoff_hz} Hz must lie in (0, {nyq}) Hz at rate {rate_hz} Hz")
    want = 2 if kind == "band" else 1
    if cuts.shape != (want,) or (kind == "band" and not cuts[0] < cuts[1]):
        raise DspError(f"a {btype} filter needs {want} increasing cut-off(s), got {cutoff_hz!r}")
    z, p, gain = _butter_zpk(int(order), cuts, float(rate_hz), kind)
    return np.ascontiguousarray(_zpk_to_sos(z, p, gain), dtype=np.float64)


def sosfilt_zi(sos: object) -> np.ndarray:
    """Initial states (n_sections, 2) of the direct form II transposed for a unit step in steady state.

    Section s sees a constant input ``u`` (the DC gain of the sections before it); in steady state its
    output is ``y = u·H_s(1) = u·Σb / Σa`` and the two delay states are ``z1 = u·b2 − a2·y`` and
    ``z0 = u·b1 − a1·y + z1``. Multiply by the first input sample to start a filter without a transient.
    """
    s = _check_sos(sos)
    zi = np.empty((len(s), 2))
    u = 1.0
    for i, (b0, b1, b2, _a0, a1, a2) in enumerate(s):
        y = u * (b0 + b1 + b2) / (1.0 + a1 + a2)
        zi[i, 1] = u * b2 - a2 * y
        zi[i, 0] = u * b1 - a1 * y + zi[i, 1]
        u = y
    return zi


def _check_sos(sos: object) -> np.ndarray:
    s = np.ascontiguousarray(sos, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != 6 or s.shape[0] < 1:
        raise DspError(f"sos must have shape (n_sections, 6), got {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s[:, 3] != 1.0):
        raise DspError("sos must be finite with a0 == 1 in every section")
    return s


class SosFilter:
    """A causal SOS filter that keeps its state between :meth:`process` calls.

    ``init="zero"`` starts from rest; ``init="first"`` starts in the steady state of the first finite
    input (no start-up transient for signals with an offset such as skin conductance).
    """

    def __init__(self, sos: object, init: str = "zero") -> None:
        self.sos = _check_sos(sos)
        if init not in ("zero", "first"):
            raise DspError(f"init must be 'zero' or 'first', got {init!r}")
        self.init = init
        self._zi_unit: np.ndarray | None = None
        if init == "first":
            self._zi_unit = sosfilt_zi(self.sos)
        self.reset()

    def reset(self) -> None:
        """Back to the initial state."""
        self.zi = np.zeros((self.sos.shape[0], 2))
        self._hold = np.array([np.nan])
        self._started = self.init == "zero"

    @property
    def state_nbytes(self) -> int:
        return int(self.zi.nbytes + self._hold.nbytes)

    def process(self, x: object) -> np.ndarray:
        """Filter the next chunk; returns a new float64 array of the same length (the input is not changed)."""
        a = real_1d(x, "filter input")
        out = np.empty(a.shape[0])
        if not self._started:
            fin = np.flatnonzero(np.isfinite(a))
            if len(fin) == 0:
                out[:] = np.nan
                return out
            self.zi[:] = self._zi_unit * a[fin[0]]
            self._started = True
        _sosfilt.sosfilt_hold(self.sos, self.zi, a, out, self._hold)
        return out


def sosfilt(sos: object, x: object, init: str = "zero") -> np.ndarray:
    """Batch causal filtering; equals :class:`SosFilter` fed the same samples in any chunks."""
    return SosFilter(sos, init=init).process(x)


def sosfilt_reference(sos: np.ndarray, x: np.ndarray, zi: np.ndarray | None = None) -> np.ndarray:
    """Plain Python twin of the kernel (direct form II transposed, zero-order hold on non-finite input)."""
    sos = np.asarray(sos, dtype=np.float64)
    z = np.zeros((len(sos), 2)) if zi is None else np.array(zi, dtype=np.float64)
    out = np.empty(len(x))
    last = np.nan
    for i, v in enumerate(np.asarray(x, dtype=np.float64)):
        finite = np.isfinite(v)
        if finite:
            last = v
        elif not np.isfinite(last):
            out[i] = np.nan
            continue
        u = v if finite else last
        for s, (b0, b1, b2, _a0, a1, a2) in enumerate(sos):
            y = b0 * u + z[s, 0]
            z[s, 0] = b1 * u - a1 * y + z[s, 1]
            z[s, 1] = b2 * u - a2 * y
            u = y
        out[i] = u if finite else np.nan
    return out

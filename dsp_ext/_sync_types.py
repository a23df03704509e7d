"""Parameters and result containers of the windowed cross-correlation (shared by kernel and reference)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import DspError

#: Names of the per-window scalars, in the order of :meth:`WccResult.window_values` (MQTT metric keys).
WINDOW_VALUE_NAMES: tuple[str, ...] = (
    "r0",
    "therapist_led",
    "client_led",
    "therapist_led_max",
    "client_led_max",
    "inphase_r",
    "inphase_z",
    "inphase_lag_s",
    "antiphase_r",
    "antiphase_z",
    "antiphase_lag_s",
    "max_r",
    "max_z",
    "max_lag_s",
    "leader",
)

#: Names of the per-window leadership values read from the pooled profile (the ONE "who leads" rule,
#: docs/dsp.md "Who leads"): computed in Python from the kernels' profiles, published after the kernel values.
POOLED_VALUE_NAMES: tuple[str, ...] = ("pooled_r", "pooled_lag_s", "pooled_leader")

#: Every per-window value the unit publishes in a ``sync_<channel>`` metric, in order (kernel values first).
METRIC_VALUE_NAMES: tuple[str, ...] = WINDOW_VALUE_NAMES + POOLED_VALUE_NAMES

#: Fisher z is taken of r clipped to this magnitude (ARCHITECTURE §4).
R_CLIP = 0.999


def _samples(value_s: float, rate_hz: float, name: str) -> int:
    n = value_s * rate_hz
    k = int(round(n))
    if abs(n - k) > 1e-6 * max(1.0, abs(n)):
        raise DspError(f"SyncParams: {name}={value_s!r} s is not a whole number of samples at {rate_hz} Hz")
    return k


@dataclass(frozen=True)
class SyncParams:
    """Windowed cross-correlation settings, rMEA-style names in seconds (ARCHITECTURE §4 defaults).

    ``rate_hz``: rate of the feature series (4 Hz grid); ``win_s``: window length; ``inc_s``: step between
    window starts; ``lag_s``: largest lag in each direction (lags step by one sample); ``peak_window``: odd
    number of lags in the neighbourhood a Boker peak must dominate (5 = the peak and two lags each side); it
    may not be wider than the lag range ``2 * lag + 1`` (then no lag could be a peak), except with
    ``lag_s = 0``, which asks for zero-lag correlation only (every peak NaN by definition);
    ``peak_min_r``: minimum height |r| of a Boker peak (0 = Boker et al.'s rule, any local extremum of the
    right sign; a minimum height is the ``height`` criterion of peak detectors such as
    ``scipy.signal.find_peaks``); ``leader_min_r``: the window's global maximum r must reach this for the
    window to name a leader (the ``leader`` value; docs/dsp.md "Who leads"); ``leader_span_s``: the temporal
    resolution of "who leads" — the leader of a window is read from the mean Fisher-z profile of the windows
    pooled over the trailing ``leader_span_s`` seconds of window starts: ``.leader_windows`` =
    ⌊``leader_span_s / inc_s``⌋ windows (at least 1), this one included; ``leader_span_s <= inc_s`` reads each
    window alone. The sample counts are ``.win``, ``.inc`` and ``.lag``.
    """

    rate_hz: float = 4.0
    win_s: float = 30.0
    inc_s: float = 1.0
    lag_s: float = 10.0
    peak_window: int = 5
    peak_min_r: float = 0.0
    leader_min_r: float = 0.3
    leader_span_s: float = 120.0
    win: int = field(init=False, repr=False, compare=False)
    inc: int = field(init=False, repr=False, compare=False)
    lag: int = field(init=False, repr=False, compare=False)
    leader_windows: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("rate_hz", "win_s", "inc_s", "lag_s", "leader_span_s"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not np.isfinite(v):
                raise DspError(f"SyncParams: {name} must be a finite number, got {v!r}")
        if self.rate_hz <= 0:
            raise DspError(f"SyncParams: rate_hz must be > 0, got {self.rate_hz!r}")
        win = _samples(self.win_s, self.rate_hz, "win_s")
        inc = _samples(self.inc_s, self.rate_hz, "inc_s")
        lag = _samples(self.lag_s, self.rate_hz, "lag_s")
        if win < 2:
            raise DspError(
                f"SyncParams: window must hold >= 2 samples, got win_s={self.win_s} ({win} samples)"
            )
        if inc < 1:
            raise DspError(f"SyncParams: inc_s must be >= one sample, got inc_s={self.inc_s} ({inc} samples)")
        if lag < 0:
            raise DspError(f"SyncParams: lag_s must be >= 0, got {self.lag_s}")
        pw = self.peak_window
        if isinstance(pw, bool) or not isinstance(pw, int) or pw < 3 or pw % 2 == 0:
            raise DspError(f"SyncParams: peak_window must be an odd integer >= 3, got {pw!r}")
        if lag > 0 and 2 * lag + 1 < pw:
            raise DspError(
                f"SyncParams: peak_window={pw} lags is wider than the lag range ({2 * lag + 1} lags for "
                f"lag_s={self.lag_s} at {self.rate_hz} Hz): no lag could ever be a peak"
            )
        for name in ("peak_min_r", "leader_min_r"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise DspError(f"SyncParams: {name} must be a number in [0, 1], got {v!r}")
        if self.leader_span_s <= 0:
            raise DspError(f"SyncParams: leader_span_s must be > 0, got {self.leader_span_s!r}")
        object.__setattr__(self, "leader_windows", max(1, int(math.floor(self.leader_span_s / self.inc_s + 1e-9))))
        object.__setattr__(self, "win", win)
        object.__setattr__(self, "inc", inc)
        object.__setattr__(self, "lag", lag)

    @property
    def n_lags(self) -> int:
        """Number of lags in a profile, ``2 * lag + 1`` (column ``lag`` is τ = 0)."""
        return 2 * self.lag + 1

    @property
    def lags(self) -> np.ndarray:
        """Lags in samples, −lag … +lag (τ > 0: therapist leads)."""
        return np.arange(-self.lag, self.lag + 1, dtype=np.int64)

    def n_windows(self, n_samples: int) -> int:
        """Number of complete windows in a pair of series of ``n_samples`` samples each.

        Window k starts at therapist sample ``t_k = lag + k * inc`` (so every lag has data) and needs
        samples up to ``t_k + win + lag - 1`` of both series.
        """
        span = self.win + 2 * self.lag
        if n_samples < span:
            return 0
        return (n_samples - span) // self.inc + 1


@dataclass
class WccResult:
    """Windowed cross-correlation of a therapist/client pair; one row per window.

    ``window_start``: therapist sample index of each window's first sample; ``lags_s``: lag of each profile
    column in seconds; ``r``: the r(τ) profiles (n_windows × n_lags). The rest are per-window scalars named
    as in :data:`WINDOW_VALUE_NAMES` (NaN where undefined).
    """

    params: SyncParams
    window_start: np.ndarray
    lags_s: np.ndarray
    r: np.ndarray
    r0: np.ndarray
    therapist_led: np.ndarray
    client_led: np.ndarray
    therapist_led_max: np.ndarray
    client_led_max: np.ndarray
    inphase_r: np.ndarray
    inphase_z: np.ndarray
    inphase_lag_s: np.ndarray
    antiphase_r: np.ndarray
    antiphase_z: np.ndarray
    antiphase_lag_s: np.ndarray
    max_r: np.ndarray
    max_z: np.ndarray
    max_lag_s: np.ndarray
    leader: np.ndarray

    @property
    def pooled_r(self) -> np.ndarray:
        """r of the global maximum of each window's pooled profile (see ``dsp_ext.synchrony.pooled_leader``)."""
        return self._pooled()[0]

    @property
    def pooled_lag_s(self) -> np.ndarray:
        """Lag (s) of the global maximum of each window's pooled profile."""
        return self._pooled()[1]

    @property
    def pooled_leader(self) -> np.ndarray:
        """Who leads at each window (+1 therapist, −1 client, 0 none): the ONE rule, docs/dsp.md "Who leads"."""
        return self._pooled()[2]

    def _pooled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # computed on first use (the surrogate tests never need it) and kept; the profiles must not change after
        cached = self.__dict__.get("_pooled_cache")
        if cached is None:
            from .synchrony import LeaderPool  # the rule lives with the other synchrony definitions

            cached = LeaderPool(self.params).push(self.r)
            self.__dict__["_pooled_cache"] = cached
        return cached

    def __len__(self) -> int:
        return int(self.window_start.shape[0])

    @property
    def window_start_s(self) -> np.ndarray:
        """Window starts in seconds from the first sample."""
        return self.window_start / self.params.rate_hz

    def window_values(self, i: int) -> dict[str, float]:
        """The scalars of window ``i`` as plain floats (keys: :data:`METRIC_VALUE_NAMES`, what the unit publishes)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows")
        return {name: float(getattr(self, name)[i]) for name in METRIC_VALUE_NAMES}

    @classmethod
    def empty(cls, params: SyncParams, n_windows: int) -> WccResult:
        """A result of ``n_windows`` rows filled with NaN (window_start zero)."""
        nan = np.full(n_windows, np.nan)
        return cls(
            params=params,
            window_start=np.zeros(n_windows, dtype=np.int64),
            lags_s=params.lags / params.rate_hz,
            r=np.full((n_windows, params.n_lags), np.nan),
            **{name: nan.copy() for name in WINDOW_VALUE_NAMES},
        )

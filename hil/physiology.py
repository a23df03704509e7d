"""Dyad physiology simulator with a known ground truth (issue #4, part 1).

A therapist and a client are simulated together for one session. Every signal is a deterministic
function of the seed and of the simulated time, so the emulated sensors (which sample with their own,
drifting clocks) can ask for a value at any time with :meth:`DyadSimulator.value_at`, while the
scenarios stream fixed-rate chunks with :meth:`DyadSimulator.read`; both see the same signal.

Generative model (details and parameter table in ``docs/simulator.md``):

* Latent slow drivers per person: arousal (drives the EDA tonic level and the SCR rate), a slow heart-rate
  driver (heart-rate level and fluctuation) and an RSA driver (slow changes of the RSA amplitude). Each is
  band-limited Gaussian noise (filtered white noise, zero-phase Butterworth), normalised to unit SD.
* Coupling on a schedule of segments (:class:`Segment`) acts on these latent drivers: in a
  ``therapist_led`` segment the client's driver is ``gain * T(t - lag) + sqrt(1 - gain^2) * C_own(t)``,
  so the windowed cross-correlation of Boker et al. (2002) with ARCHITECTURE §4's sign convention
  (tau > 0 = therapist leads) peaks at ``tau = +lag``. Segment boundaries are cross-faded.
* EDA (µS): tonic level ``SCL * exp(k * arousal + drift)`` plus skin-conductance responses, each a
  normalised bi-exponential (Bateman) impulse response with rise ~1.4-2.9 s and decay ~5-10 s, whose onsets
  are an inhomogeneous Poisson process with rate growing with arousal; plus white sensor noise.
* Heart: integral pulse frequency modulation (IPFM; Bayly 1968, Mateo & Laguna 2000): beats occur when
  the integral of ``1 / p(t)`` crosses an integer, where the instantaneous period
  ``p(t) = 60 / HR(t) + a(t) * sin(phi_resp(t))`` carries respiratory sinus arrhythmia at the breathing
  rhythm (0.15-0.4 Hz) with amplitude ``a(t)`` set by the person's RSA tone (ln ms², Porges-Bohrer style:
  ``ln(a^2 / 2)`` in ms² is the variance of the IBI series in the respiratory band).
* PPG (IR ADC counts): per beat a pulse arriving after a pulse transit time, made of a skewed systolic wave
  and a diastolic (reflected) wave, which leaves a dicrotic notch between them; DC level, respiratory
  baseline and amplitude modulation, slow baseline wander, white noise and optional motion artefacts.
  ``value_at`` also serves a red LED channel (``<role>/ppg_red``) with the same pulses for the MAX30102.
* Sensor events: contact loss (EDA open circuit ~0 µS, PPG drops to ambient light, no pulse) and
  saturation (clipped at the front-end's range), flagged in the truth.
* Research hypothesis knob ``regulation_effect``: the coupling gain of every coupled segment is
  ``tanh(atanh(gain) + regulation_effect * R)`` where ``R`` is the therapist's regulation index
  (RSA level up, epoch-to-epoch RSA variability down). With ``regulation_effect == 0`` the gain is the
  configured one, independent of the therapist's regulation. Optional epoch-lagged RSA coupling
  (``rsa_coupling_t_to_c`` / ``rsa_coupling_c_to_t``) for interpersonal-regulation analyses.

The whole session is generated at construction (10 simulated minutes: ~0.05 s CPU; the sample arrays on
the first ``read``), so the output does not depend on how :meth:`DyadSimulator.read` is chunked.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import signal as sps
from scipy.optimize import brentq

from core.errors import ConfigError, DyadsyncError
from core.vocab import FEATURE_RATE_HZ, ROLES

logger = logging.getLogger(__name__)

SIGNALS = ("eda", "ppg")
STREAMS = tuple(f"{role}/{sig}" for role in ROLES for sig in SIGNALS)
# extra signals value_at() also serves (not returned by read()): the red LED channel of a MAX30102
AUX_STREAMS = tuple(f"{role}/ppg_red" for role in ROLES)
MODES = ("uncoupled", "therapist_led", "client_led", "in_phase", "anti_phase")
CHANNELS = ("eda", "hr", "both")
EVENT_KINDS = ("contact_loss", "saturation", "motion")

LATENT_RATE_HZ = 20.0  # internal grid of the slow, smooth components (interpolated linearly)
MARGIN_S = 10.0  # value_at() is defined this far before 0 and after duration_s
EPOCH_S = 30.0  # RSA epoch length (ARCHITECTURE §4)
MAX_LAG_S = 30.0
EVENT_RAMP_S = 0.2  # contact loss / saturation take this long to set in and to clear
EDA_OPEN_FRACTION = 0.2  # open-circuit EDA: 0 µS plus a fifth of the sensor noise (rectified)
PPG_AMBIENT_COUNTS = 1500.0  # PPG with no skin contact: ambient light only
PPG_RESP_BASELINE = 0.003  # respiratory-induced intensity variation, fraction of DC
PPG_RESP_AMPLITUDE = 0.05  # respiratory-induced amplitude variation, fraction of AC
# pulse shape, times in seconds at 70 bpm, scaled by sqrt(IBI / 0.857 s): skewed systolic Gaussian at the
# pulse peak and a diastolic (reflected) Gaussian later; the dicrotic notch forms between them
PULSE_RISE_SIGMA = 0.045
PULSE_FALL_SIGMA = 0.085
PULSE_DIA_DELAY = 0.28
PULSE_DIA_SIGMA = 0.075
PULSE_NEIGHBOURS = (-2, -1, 0, 1)  # pulses (relative to the last peak <= t) that reach a time t
# red channel: DC as a fraction of the IR DC; its AC/DC ratio is R times the IR's (R ~ 0.5 <=> SpO2 ~ 97 %)
PPG_RED_DC_FRACTION = 0.7

# Therapist regulation index R = ((L - L_ref) / L_scale - (S - S_ref) / S_scale) / 2 with L the RSA level
# (ln ms²) and S the epoch-to-epoch SD of RSA (ln units); the references are the centre and spread of the
# values drawn when the config leaves them unset.
RSA_LEVEL_REF_LN_MS2 = 6.0
RSA_LEVEL_SCALE_LN_MS2 = 0.7
RSA_SD_REF_LN = 0.3
RSA_SD_SCALE_LN = 0.12


class SimulatorError(DyadsyncError, ValueError):
    """A request to the simulator is invalid (unknown stream, time outside the session, bad duration)."""


def _finite(name: str, value: float, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ConfigError(f"{name}: must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConfigError(f"{name}: must be <= {hi}, got {v}")
    return v


@dataclass(frozen=True)
class Segment:
    """One coupling segment ``[start_s, end_s)`` of the session schedule.

    ``mode``: ``therapist_led`` (client follows the therapist ``lag_s`` later with ``gain``),
    ``client_led`` (therapist follows), ``in_phase`` (a shared driver, lag 0), ``anti_phase``
    (client = -gain x therapist driver, ``lag_s`` later; usually 0) or ``uncoupled``.
    ``channel``: which latent drivers couple: ``eda`` (arousal), ``hr`` (heart rate and RSA), ``both``.
    """

    start_s: float
    end_s: float
    mode: str = "uncoupled"
    lag_s: float = 0.0
    gain: float = 0.8
    channel: str = "both"

    def __post_init__(self) -> None:
        start = _finite("Segment.start_s", self.start_s, lo=0.0)
        end = _finite("Segment.end_s", self.end_s)
        if end <= start:
            raise ConfigError(f"Segment: end_s ({end}) must be after start_s ({start})")
        if self.mode not in MODES:
            raise ConfigError(f"Segment.mode: {self.mode!r} is not one of {MODES}")
        if self.channel not in CHANNELS:
            raise ConfigError(f"Segment.channel: {self.channel!r} is not one of {CHANNELS}")
        lag = _finite("Segment.lag_s", self.lag_s, lo=0.0, hi=MAX_LAG_S)
        gain = _finite("Segment.gain", self.gain, lo=0.0, hi=0.99)
        if self.mode == "in_phase" and lag != 0.0:
            raise ConfigError(f"Segment: in_phase has lag 0 by definition, got lag_s={lag}")
        object.__setattr__(self, "start_s", start)
        object.__setattr__(self, "end_s", end)
        object.__setattr__(self, "lag_s", lag)
        object.__setattr__(self, "gain", gain)

    @property
    def coupled(self) -> bool:
        return self.mode != "uncoupled"

    def couples(self, channel: str) -> bool:
        """True if this segment couples ``channel`` (``"eda"`` or ``"hr"``)."""
        return self.coupled and self.channel in (channel, "both")

    @property
    def expected_tau_s(self) -> float | None:
        """Where the windowed cross-correlation peak lies (ARCHITECTURE §4: tau > 0 = therapist leads).

        ``None`` when uncoupled; for ``anti_phase`` the peak is a minimum (negative r).
        """
        if self.mode == "uncoupled":
            return None
        if self.mode == "client_led":
            return -self.lag_s
        if self.mode == "in_phase":
            return 0.0
        return self.lag_s


@dataclass(frozen=True)
class SensorEvent:
    """A sensor fault on one stream during ``[start_s, end_s)``.

    ``kind``: ``contact_loss`` (EDA open circuit ~0 µS; PPG at ambient light, no pulse), ``saturation``
    (clipped at the front-end's range) or ``motion`` (PPG only: a large low-frequency artefact).
    """

    stream: str
    kind: str
    start_s: float
    end_s: float

    def __post_init__(self) -> None:
        if self.stream not in STREAMS:
            raise ConfigError(f"SensorEvent.stream: {self.stream!r} is not one of {STREAMS}")
        if self.kind not in EVENT_KINDS:
            raise ConfigError(f"SensorEvent.kind: {self.kind!r} is not one of {EVENT_KINDS}")
        if self.kind == "motion" and not self.stream.endswith("/ppg"):
            raise ConfigError(f"SensorEvent: motion artefacts are modelled on PPG streams only, got {self.stream!r}")
        start = _finite("SensorEvent.start_s", self.start_s, lo=0.0)
        end = _finite("SensorEvent.end_s", self.end_s)
        if end <= start:
            raise ConfigError(f"SensorEvent: end_s ({end}) must be after start_s ({start})")
        object.__setattr__(self, "start_s", start)
        object.__setattr__(self, "end_s", end)


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulated session. Person parameters left ``None`` are drawn from the seed."""

    seed: int = 0
    duration_s: float = 600.0
    eda_rate_hz: float = 32.0
    ppg_rate_hz: float = 100.0
    schedule: Sequence[Segment] = ()
    regulation_effect: float = 0.0
    therapist_rsa_ln_ms2: float | None = None
    client_rsa_ln_ms2: float | None = None
    therapist_rsa_sd_ln: float | None = None
    client_rsa_sd_ln: float | None = None
    therapist_hr_bpm: float | None = None
    client_hr_bpm: float | None = None
    therapist_scl_us: float | None = None
    client_scl_us: float | None = None
    arousal_band_hz: tuple[float, float] = (0.01, 0.2)
    hr_band_hz: tuple[float, float] = (0.01, 0.1)
    transition_s: float = 2.0
    eda_noise_us: float = 0.005
    ppg_noise_counts: float = 25.0
    ppg_inverted: bool = False
    events: Sequence[SensorEvent] = ()
    contact_loss_per_h: float = 0.0
    saturation_per_h: float = 0.0
    motion_per_min: float = 0.0
    rsa_coupling_t_to_c: float = 0.0
    rsa_coupling_c_to_t: float = 0.0
    eda_max_us: float = 40.0
    ppg_adc_max: float = 262143.0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise ConfigError(f"SimConfig.seed: expected a non-negative integer, got {self.seed!r}")
        _finite("SimConfig.duration_s", self.duration_s, lo=1.0, hi=7 * 24 * 3600.0)
        _finite("SimConfig.eda_rate_hz", self.eda_rate_hz, lo=1.0, hi=10000.0)
        _finite("SimConfig.ppg_rate_hz", self.ppg_rate_hz, lo=20.0, hi=10000.0)
        _finite("SimConfig.regulation_effect", self.regulation_effect, lo=-5.0, hi=5.0)
        for role in ROLES:
            for key, lo, hi in (("rsa_ln_ms2", 2.0, 10.0), ("rsa_sd_ln", 0.0, 2.0), ("hr_bpm", 40.0, 140.0),
                                ("scl_us", 0.5, 30.0)):
                name = f"{role}_{key}"
                if getattr(self, name) is not None:
                    object.__setattr__(self, name, _finite(f"SimConfig.{name}", getattr(self, name), lo=lo, hi=hi))
        for name in ("arousal_band_hz", "hr_band_hz"):
            value = getattr(self, name)
            try:
                band = tuple(float(x) for x in value)
            except (TypeError, ValueError):
                raise ConfigError(f"SimConfig.{name}: expected (low_hz, high_hz), got {value!r}") from None
            if len(band) != 2 or not (0.001 <= band[0] < band[1] <= 1.0):
                raise ConfigError(f"SimConfig.{name}: need 0.001 <= low < high <= 1.0 Hz, got {value!r}")
            object.__setattr__(self, name, band)
        _finite("SimConfig.transition_s", self.transition_s, lo=0.0, hi=30.0)
        _finite("SimConfig.eda_noise_us", self.eda_noise_us, lo=0.0, hi=5.0)
        _finite("SimConfig.ppg_noise_counts", self.ppg_noise_counts, lo=0.0, hi=1e5)
        for name in ("rsa_coupling_t_to_c", "rsa_coupling_c_to_t"):
            _finite(f"SimConfig.{name}", getattr(self, name), lo=-0.9, hi=0.9)
        for name in ("contact_loss_per_h", "saturation_per_h", "motion_per_min"):
            _finite(f"SimConfig.{name}", getattr(self, name), lo=0.0, hi=600.0)
        _finite("SimConfig.eda_max_us", self.eda_max_us, lo=1.0, lo_open=True)
        _finite("SimConfig.ppg_adc_max", self.ppg_adc_max, lo=1000.0)
        schedule = tuple(self.schedule)
        for i, seg in enumerate(schedule):
            if not isinstance(seg, Segment):
                raise ConfigError(f"SimConfig.schedule[{i}]: expected a Segment, got {type(seg).__name__}")
            if seg.end_s > self.duration_s + 1e-9:
                raise ConfigError(f"SimConfig.schedule[{i}]: ends at {seg.end_s} s, after duration_s={self.duration_s}")
            if i and seg.start_s < schedule[i - 1].end_s - 1e-9:
                raise ConfigError(
                    f"SimConfig.schedule[{i}]: starts at {seg.start_s} s, before the previous segment ends "
                    f"({schedule[i - 1].end_s} s); segments must be sorted and must not overlap")
        object.__setattr__(self, "schedule", schedule)
        events = tuple(self.events)
        for i, ev in enumerate(events):
            if not isinstance(ev, SensorEvent):
                raise ConfigError(f"SimConfig.events[{i}]: expected a SensorEvent, got {type(ev).__name__}")
        object.__setattr__(self, "events", events)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (to hand the same session to another process: same dict, same signals)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["seed"] = int(self.seed)
        out["schedule"] = [asdict(seg) for seg in self.schedule]
        out["events"] = [asdict(ev) for ev in self.events]
        out["arousal_band_hz"] = list(self.arousal_band_hz)
        out["hr_band_hz"] = list(self.hr_band_hz)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SimConfig:
        """Inverse of :meth:`to_dict`; unknown keys and malformed segments/events raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"SimConfig.from_dict: expected a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"SimConfig.from_dict: unknown keys {unknown}; known keys are {sorted(known)}")
        args = dict(data)
        for key, item_cls in (("schedule", Segment), ("events", SensorEvent)):
            items = []
            for i, item in enumerate(args.get(key, ())):
                if not isinstance(item, dict):
                    raise ConfigError(f"SimConfig.from_dict: {key}[{i}] must be a dict, got {item!r}")
                try:
                    items.append(item_cls(**item))
                except TypeError as exc:
                    raise ConfigError(f"SimConfig.from_dict: {key}[{i}]: {exc}") from None
            args[key] = tuple(items)
        return cls(**args)


@dataclass(frozen=True)
class PersonParams:
    """The drawn (or configured) constants of one simulated person."""

    hr_bpm: float
    hr_sd_bpm: float
    rsa_ln_ms2: float
    rsa_sd_ln: float
    resp_hz: float
    scl_us: float
    scl_arousal_gain: float  # log-units of SCL per SD of arousal
    scl_trend_per_h: float  # log-units per hour
    scr_rate_per_min: float
    scr_amp_us: float
    ptt_s: float
    ppg_dc_counts: float
    ppg_ac_counts: float
    ppg_diastolic_ratio: float
    ppg_red_ratio: float  # R = (AC/DC)_red / (AC/DC)_ir of the red LED channel (SpO2 ~ 110 - 25 R)


@dataclass(frozen=True)
class ScrEvent:
    """One skin-conductance response: onset, peak amplitude above the pre-onset level and its shape."""

    onset_s: float
    amplitude_us: float
    tau_rise_s: float
    tau_decay_s: float
    rise_s: float  # onset to peak
    half_recovery_s: float  # peak to 50 % recovery


@dataclass(frozen=True)
class SegmentTruth:
    """A schedule segment as simulated (gaps in the schedule are filled with uncoupled segments)."""

    segment: Segment
    gain_eff: float  # the gain actually used (differs from segment.gain when regulation_effect != 0)

    @property
    def start_s(self) -> float:
        return self.segment.start_s

    @property
    def end_s(self) -> float:
        return self.segment.end_s

    @property
    def mode(self) -> str:
        return self.segment.mode

    @property
    def expected_tau_s(self) -> float | None:
        return self.segment.expected_tau_s

    @property
    def expected_sign(self) -> int:
        """+1 (in-phase peak expected), -1 (anti-phase) or 0 (uncoupled)."""
        return 0 if self.mode == "uncoupled" else (-1 if self.mode == "anti_phase" else 1)

    def couples(self, channel: str) -> bool:
        """True if this segment couples ``channel`` (``"eda"`` or ``"hr"``)."""
        return self.segment.couples(channel)


@dataclass(frozen=True)
class GroundTruth:
    """What was simulated. Per-role values are dicts keyed by ``"therapist"`` / ``"client"``.

    * ``t_grid_s``: the 4 Hz feature grid ``0, 0.25, ... < duration_s``.
    * ``hr_bpm``: heart rate from the beats: at each beat ``60 / IBI`` of the interval ending there, linearly
      interpolated onto the grid (what a correct beat detector + the HR feature should produce).
    * ``rate_bpm``: the IPFM modulating rate ``60 / p(t)`` on the grid (includes the RSA oscillation).
    * ``arousal``, ``hr_drive``, ``rsa_drive``: the latent drivers (unit SD) on the grid.
    * ``eda_us``: noise-free, fault-free EDA (tonic + SCRs) on the grid; ``eda_tonic_us`` the tonic part.
    * ``beat_times_s``: heart beats (the IPFM events, "R peaks") in ``[0, duration_s)``; ``ibi_ms`` the
      intervals between consecutive ones (``len = beats - 1``); ``pulse_peak_s``: PPG systolic peaks.
    * ``rsa_epoch_start_s`` / ``rsa_ln_ms2``: generative RSA per complete 30-s epoch, ``ln(mean(a^2) / 2)``
      with ``a`` the IBI modulation amplitude in ms.
    * ``events``: every sensor event (configured and random), sorted by start.
    """

    duration_s: float
    segments: tuple[SegmentTruth, ...]
    t_grid_s: np.ndarray
    hr_bpm: dict[str, np.ndarray]
    rate_bpm: dict[str, np.ndarray]
    arousal: dict[str, np.ndarray]
    hr_drive: dict[str, np.ndarray]
    rsa_drive: dict[str, np.ndarray]
    eda_us: dict[str, np.ndarray]
    eda_tonic_us: dict[str, np.ndarray]
    resp_hz: dict[str, np.ndarray]
    beat_times_s: dict[str, np.ndarray]
    ibi_ms: dict[str, np.ndarray]
    pulse_peak_s: dict[str, np.ndarray]
    rsa_epoch_start_s: np.ndarray
    rsa_ln_ms2: dict[str, np.ndarray]
    scr: dict[str, tuple[ScrEvent, ...]]
    events: tuple[SensorEvent, ...]
    params: dict[str, PersonParams]
    regulation_index: float
    regulation_effect: float

    def segment_at(self, t_s: float) -> SegmentTruth:
        """The segment containing simulated time ``t_s``."""
        for seg in self.segments:
            if seg.start_s <= t_s < seg.end_s:
                return seg
        raise SimulatorError(f"t_s={t_s} is outside the session [0, {self.duration_s})")

    def feature(self, name: str) -> np.ndarray:
        """The truth of a 4 Hz feature stream ``"<role>/eda"`` (µS) or ``"<role>/hr"`` (bpm), on ``t_grid_s``."""
        role, _, sig = name.partition("/")
        if role not in ROLES or sig not in ("eda", "hr"):
            raise SimulatorError(f"unknown feature {name!r}; features are <role>/eda and <role>/hr, roles {ROLES}")
        return (self.eda_us if sig == "eda" else self.hr_bpm)[role]

    def event_mask(self, stream: str, t_s: np.ndarray | float, kinds: Sequence[str] = EVENT_KINDS) -> np.ndarray:
        """True where ``stream`` is affected by an event of one of ``kinds`` at times ``t_s``."""
        if stream in AUX_STREAMS:
            stream = stream.replace("/ppg_red", "/ppg")  # the red LED shares the IR channel's sensor
        if stream not in STREAMS:
            raise SimulatorError(f"unknown stream {stream!r}; streams are {STREAMS + AUX_STREAMS}")
        t = np.asarray(t_s, dtype=np.float64)
        mask = np.zeros(t.shape, dtype=bool)
        for ev in self.events:
            if ev.stream == stream and ev.kind in kinds:
                mask |= (t >= ev.start_s) & (t < ev.end_s)
        return mask


# ----------------------------------------------------------------------------------------------------------
# helpers


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """Raised-cosine step: 0 for x <= -0.5, 1 for x >= 0.5."""
    xc = np.clip(x, -0.5, 0.5)
    return 0.5 - 0.5 * np.cos(np.pi * (xc + 0.5))


def _bateman_peak(tau_rise_s: float, tau_decay_s: float) -> tuple[float, float]:
    """Time of the peak of ``exp(-t/td) - exp(-t/tr)`` and its value."""
    tp = tau_rise_s * tau_decay_s / (tau_decay_s - tau_rise_s) * math.log(tau_decay_s / tau_rise_s)
    return tp, math.exp(-tp / tau_decay_s) - math.exp(-tp / tau_rise_s)


def _bateman(x: np.ndarray, tau_rise_s: float, tau_decay_s: float) -> np.ndarray:
    """Bi-exponential SCR impulse response normalised to a peak of 1 (0 before the onset)."""
    _, hmax = _bateman_peak(tau_rise_s, tau_decay_s)
    xp = np.maximum(x, 0.0)
    return np.where(x > 0.0, (np.exp(-xp / tau_decay_s) - np.exp(-xp / tau_rise_s)) / hmax, 0.0)


def _half_recovery_s(tau_rise_s: float, tau_decay_s: float) -> float:
    """Time from the peak of the normalised Bateman response down to 0.5."""
    tp, hmax = _bateman_peak(tau_rise_s, tau_decay_s)

    def h(x: float) -> float:
        return (math.exp(-x / tau_decay_s) - math.exp(-x / tau_rise_s)) / hmax - 0.5

    return float(brentq(h, tp, tp + 20.0 * tau_decay_s, xtol=1e-9)) - tp


def _ramp_mask(t: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """0 outside ``[start, end]``, 1 inside, with linear ramps of EVENT_RAMP_S just inside the edges."""
    ramp = min(EVENT_RAMP_S, 0.5 * (end_s - start_s))
    up = np.clip((t - start_s) / ramp, 0.0, 1.0)
    down = np.clip((end_s - t) / ramp, 0.0, 1.0)
    return np.minimum(up, down)


# ----------------------------------------------------------------------------------------------------------


class DyadSimulator:
    """Simulates a therapist-client dyad; see the module docstring and ``docs/simulator.md``.

    ``read(duration_s)`` advances the simulated clock and returns the new samples of every stream
    (sample ``k`` of a stream at rate ``f`` is at ``k / f`` seconds); ``value_at(stream, t_s)`` evaluates the
    same signals at arbitrary times in ``[-MARGIN_S, duration_s + MARGIN_S]``; ``truth`` is the ground truth.
    """

    def __init__(self, config: SimConfig) -> None:
        if not isinstance(config, SimConfig):
            raise ConfigError(f"DyadSimulator: expected a SimConfig, got {type(config).__name__}")
        self.config = config
        self.rates_hz = {
            "therapist/eda": float(config.eda_rate_hz),
            "therapist/ppg": float(config.ppg_rate_hz),
            "client/eda": float(config.eda_rate_hz),
            "client/ppg": float(config.ppg_rate_hz),
            "therapist/ppg_red": float(config.ppg_rate_hz),
            "client/ppg_red": float(config.ppg_rate_hz),
        }
        self._build()
        self._t_s = 0.0
        self._pos = dict.fromkeys(STREAMS, 0)
        logger.debug("simulated %.0f s of dyad physiology (seed %d)", config.duration_s, config.seed)

    # ---- public API -----------------------------------------------------------------------------------

    streams = STREAMS

    @property
    def time_s(self) -> float:
        """Simulated time reached by :meth:`read`."""
        return self._t_s

    @property
    def finished(self) -> bool:
        return self._t_s >= self.config.duration_s

    @property
    def truth(self) -> GroundTruth:
        return self._truth

    def read(self, duration_s: float) -> dict[str, np.ndarray]:
        """Advance simulated time by ``duration_s`` and return each stream's samples in that interval.

        Sample ``k`` belongs to the call whose interval ``[t, t + duration_s)`` contains ``k / rate``.
        Reading past ``duration_s`` returns only the samples up to the end (possibly none).
        """
        try:
            d = float(duration_s)
        except (TypeError, ValueError):
            raise SimulatorError(f"read: duration_s must be a number, got {duration_s!r}") from None
        if not (math.isfinite(d) and d > 0.0):
            raise SimulatorError(f"read: duration_s must be finite and > 0, got {duration_s!r}")
        t_end = self._t_s + d
        out = {}
        if not self._samples:
            for stream in STREAMS:
                rate = self.rates_hz[stream]
                n = self._count(self.config.duration_s, rate)
                self._samples[stream] = self._eval(stream, np.arange(n) / rate)
        for stream in STREAMS:
            full = self._samples[stream]
            k1 = min(self._count(t_end, self.rates_hz[stream]), full.size)
            k0 = self._pos[stream]
            out[stream] = full[k0:k1].copy()
            self._pos[stream] = k1
        self._t_s = t_end
        return out

    def value_at(self, stream: str, t_s: float | np.ndarray) -> float | np.ndarray:
        """The signal of ``stream`` at simulated time(s) ``t_s`` (equal to :meth:`read`'s samples at ``k / rate``)."""
        if stream not in STREAMS and stream not in AUX_STREAMS:
            raise SimulatorError(f"value_at: unknown stream {stream!r}; streams are {STREAMS + AUX_STREAMS}")
        scalar = np.ndim(t_s) == 0
        try:
            t = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
        except (TypeError, ValueError):
            raise SimulatorError(f"value_at: t_s must be a number or an array of numbers, got {t_s!r}") from None
        lo, hi = -MARGIN_S, self.config.duration_s + MARGIN_S
        if t.size and (not np.all(np.isfinite(t)) or t.min() < lo or t.max() > hi):
            raise SimulatorError(
                f"value_at({stream!r}): times must be finite and within [{lo}, {hi}] s, "
                f"got range [{np.nanmin(t) if t.size else 'n/a'}, {np.nanmax(t) if t.size else 'n/a'}]")
        if scalar:
            return self._eval_scalar(stream, float(t[0]))
        return self._eval(stream, t)

    # ---- construction ---------------------------------------------------------------------------------

    def _rng(self, name: str) -> np.random.Generator:
        """An independent generator per component, so adding a component never shifts the others."""
        return np.random.default_rng([int(self.config.seed), zlib.crc32(name.encode())])

    @staticmethod
    def _count(t_s: float, rate_hz: float) -> int:
        """Number of samples ``k >= 0`` with ``k / rate < t_s`` (robust to float round-off in summed chunks)."""
        return max(0, math.ceil(t_s * rate_hz - 1e-6))

    def _draw_params(self, role: str) -> PersonParams:
        cfg = self.config
        rng = self._rng(f"params/{role}")
        draw = {
            "hr_bpm": rng.uniform(62.0, 80.0),
            "hr_sd_bpm": rng.uniform(3.0, 5.0),
            "rsa_ln_ms2": float(np.clip(rng.normal(6.0 if role == "therapist" else 5.5, 0.7), 3.5, 8.5)),
            "rsa_sd_ln": rng.uniform(0.1, 0.5),
            "resp_hz": rng.uniform(0.2, 0.3),
            "scl_us": rng.uniform(2.0, 12.0),
            "scl_arousal_gain": rng.uniform(0.08, 0.14),
            "scl_trend_per_h": rng.uniform(-0.3, 0.1),
            "scr_rate_per_min": rng.uniform(1.5, 4.0),
            "scr_amp_us": rng.uniform(0.08, 0.25),
            "ptt_s": rng.uniform(0.18, 0.28),
            "ppg_dc_counts": rng.uniform(70000.0, 130000.0),
            "ppg_ac_frac": rng.uniform(0.008, 0.02),
            "ppg_diastolic_ratio": rng.uniform(0.35, 0.6),
        }
        draw["ppg_red_ratio"] = self._rng(f"params_red/{role}").uniform(0.45, 0.6)
        for key in ("rsa_ln_ms2", "rsa_sd_ln", "hr_bpm", "scl_us"):
            configured = getattr(cfg, f"{role}_{key}")
            if configured is not None:
                draw[key] = float(configured)
        draw["ppg_ac_counts"] = draw.pop("ppg_ac_frac") * draw["ppg_dc_counts"]
        return PersonParams(**{k: float(v) for k, v in draw.items()})

    def _filtered_noise(self, name: str, sos: np.ndarray, pad: int) -> np.ndarray:
        n = self._t_lat.size
        w = self._rng(name).standard_normal(n + 2 * pad)
        x = sps.sosfiltfilt(sos, w)[pad:pad + n]
        return (x - x.mean()) / x.std()

    def _segments(self) -> tuple[SegmentTruth, ...]:
        """The schedule with gaps filled by uncoupled segments and the effective gains."""
        cfg = self.config
        filled: list[Segment] = []
        t = 0.0
        for seg in cfg.schedule:
            if seg.start_s > t + 1e-9:
                filled.append(Segment(t, seg.start_s, "uncoupled"))
            filled.append(seg)
            t = seg.end_s
        if t < cfg.duration_s - 1e-9:
            filled.append(Segment(t, cfg.duration_s, "uncoupled"))
        out = []
        for seg in filled:
            g = seg.gain
            if seg.coupled and cfg.regulation_effect != 0.0:
                g = float(np.clip(math.tanh(math.atanh(g) + cfg.regulation_effect * self._regulation_index),
                                  0.0, 0.99))
            out.append(SegmentTruth(seg, g if seg.coupled else 0.0))
        return tuple(out)

    def _couple(self, channel: str, name: str, own_t: np.ndarray, own_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mix the two people's own drivers according to the schedule (cross-faded at segment edges)."""
        t = self._t_lat
        tr = max(self.config.transition_s, 1e-6)
        shared = None
        tot_t = np.zeros_like(own_t)
        tot_c = np.zeros_like(own_c)
        segs = self._truth_segments
        for i, st in enumerate(segs):
            seg = st.segment
            w = np.ones_like(t)
            if i > 0:
                w *= _smoothstep((t - seg.start_s) / tr)
            if i < len(segs) - 1:
                w *= 1.0 - _smoothstep((t - seg.end_s) / tr)
            g = st.gain_eff
            rest = math.sqrt(1.0 - g * g)
            if not seg.couples(channel):
                seg_t, seg_c = own_t, own_c
            elif seg.mode == "therapist_led":
                seg_t, seg_c = own_t, g * np.interp(t - seg.lag_s, t, own_t) + rest * own_c
            elif seg.mode == "anti_phase":
                seg_t, seg_c = own_t, -g * np.interp(t - seg.lag_s, t, own_t) + rest * own_c
            elif seg.mode == "client_led":
                seg_t, seg_c = g * np.interp(t - seg.lag_s, t, own_c) + rest * own_t, own_c
            else:  # in_phase: a shared driver; corr(T, C) = g
                if shared is None:
                    shared = self._filtered_noise(f"{name}/shared", self._sos[name], self._pad)
                a, b = math.sqrt(g), math.sqrt(1.0 - g)
                seg_t, seg_c = a * shared + b * own_t, a * shared + b * own_c
            tot_t += w * seg_t
            tot_c += w * seg_c
        return tot_t, tot_c

    def _build(self) -> None:
        cfg = self.config
        fs = LATENT_RATE_HZ
        pre_s = MARGIN_S + MAX_LAG_S + 5.0
        n_lat = int(math.ceil((cfg.duration_s + MARGIN_S + 5.0 + pre_s) * fs)) + 1
        self._t_lat = t = (np.arange(n_lat) - int(pre_s * fs)) / fs
        self._pad = pad = int(120 * fs)
        self._sos = {"arousal": sps.butter(4, cfg.arousal_band_hz, "bandpass", fs=fs, output="sos"),
                     "hr": sps.butter(4, cfg.hr_band_hz, "bandpass", fs=fs, output="sos"),
                     "rsa": sps.butter(2, 0.02, "lowpass", fs=fs, output="sos")}
        slow_sos = sps.butter(2, 0.02, "lowpass", fs=fs, output="sos")
        very_slow_sos = sps.butter(2, 0.004, "lowpass", fs=fs, output="sos")
        resp_sos = sps.butter(2, 0.01, "lowpass", fs=fs, output="sos")

        params = {role: self._draw_params(role) for role in ROLES}
        tp = params["therapist"]
        self._regulation_index = 0.5 * ((tp.rsa_ln_ms2 - RSA_LEVEL_REF_LN_MS2) / RSA_LEVEL_SCALE_LN_MS2
                                        - (tp.rsa_sd_ln - RSA_SD_REF_LN) / RSA_SD_SCALE_LN)
        self._truth_segments = self._segments()

        own = {key: {role: self._filtered_noise(f"{key}/{role}", self._sos[key], pad) for role in ROLES}
               for key in ("arousal", "hr", "rsa")}
        arousal = dict(zip(ROLES, self._couple("eda", "arousal", own["arousal"]["therapist"],
                                               own["arousal"]["client"]), strict=True))
        hr_drive = dict(zip(ROLES, self._couple("hr", "hr", own["hr"]["therapist"], own["hr"]["client"]),
                            strict=True))
        rsa_drive = dict(zip(ROLES, self._couple("hr", "rsa", own["rsa"]["therapist"], own["rsa"]["client"]),
                             strict=True))
        b_tc, b_ct = cfg.rsa_coupling_t_to_c, cfg.rsa_coupling_c_to_t
        if b_tc or b_ct:  # epoch-lagged RSA coupling (Goren et al. 2024's interpersonal regulation model)
            prev_t = np.interp(t - EPOCH_S, t, rsa_drive["therapist"])
            prev_c = np.interp(t - EPOCH_S, t, rsa_drive["client"])
            rsa_drive = {"therapist": (rsa_drive["therapist"] + b_ct * prev_c) / math.sqrt(1.0 + b_ct * b_ct),
                         "client": (rsa_drive["client"] + b_tc * prev_t) / math.sqrt(1.0 + b_tc * b_tc)}

        grid = np.arange(self._count(cfg.duration_s, FEATURE_RATE_HZ)) / FEATURE_RATE_HZ
        self._eda_lat: dict[str, np.ndarray] = {}
        self._beats: dict[str, np.ndarray] = {}
        self._resp_phase: dict[str, np.ndarray] = {}
        self._ppg_wander: dict[str, np.ndarray] = {}
        truth: dict[str, dict] = {k: {} for k in ("hr_bpm", "rate_bpm", "eda_us", "eda_tonic_us", "resp_hz", "beat_times_s",
                                                   "ibi_ms", "pulse_peak_s", "rsa_ln_ms2", "scr")}
        n_epochs = int(cfg.duration_s // EPOCH_S)
        epoch_starts = np.arange(n_epochs) * EPOCH_S
        for role in ROLES:
            p = params[role]
            # ---- EDA: tonic level driven by arousal, drift, SCRs with arousal-dependent rate
            drift = 0.05 * self._filtered_noise(f"eda_drift/{role}", very_slow_sos, pad)
            tonic = p.scl_us * np.exp(p.scl_arousal_gain * arousal[role] + drift + p.scl_trend_per_h * t / 3600.0)
            scr_events, scr_sum = self._scrs(role, p, arousal[role])
            self._eda_lat[role] = tonic + scr_sum
            truth["scr"][role] = tuple(ev for ev in scr_events if 0.0 <= ev.onset_s < cfg.duration_s)
            truth["eda_us"][role] = np.interp(grid, t, self._eda_lat[role])
            truth["eda_tonic_us"][role] = np.interp(grid, t, tonic)
            # ---- breathing: slowly varying rate in [0.15, 0.4] Hz
            resp = np.clip(p.resp_hz * (1.0 + 0.08 * self._filtered_noise(f"resp/{role}", resp_sos, pad)), 0.15, 0.4)
            phase = 2.0 * np.pi * (self._rng(f"resp_phase/{role}").uniform()
                                   + np.concatenate(([0.0], np.cumsum(0.5 * (resp[1:] + resp[:-1])) / fs)))
            self._resp_phase[role] = phase
            truth["resp_hz"][role] = np.interp(grid, t, resp)
            # ---- heart: IPFM on p(t) = 60 / HR(t) + a(t) sin(phi_resp(t))
            hr = np.clip(p.hr_bpm + p.hr_sd_bpm * hr_drive[role], 40.0, 160.0)
            a_s = math.sqrt(2.0 * math.exp(p.rsa_ln_ms2)) / 1000.0 * np.exp(0.5 * p.rsa_sd_ln * rsa_drive[role])
            # an IBI averages p(t) over one beat, which scales a sinusoid by sinc(f_resp * IBI): pre-compensate
            # so that the IBI series itself carries the configured RSA amplitude
            period = 60.0 / hr + a_s / np.sinc(resp * 60.0 / hr) * np.sin(phase)
            cum = self._rng(f"beat_phase/{role}").uniform() + np.concatenate(
                ([0.0], np.cumsum(0.5 * (1.0 / period[1:] + 1.0 / period[:-1])) / fs))
            k = np.arange(math.ceil(cum[0]), math.floor(cum[-1]) + 1)
            beats = np.interp(k, cum, t)
            self._beats[role] = beats
            in_session = beats[(beats >= 0.0) & (beats < cfg.duration_s)]
            truth["beat_times_s"][role] = in_session
            truth["ibi_ms"][role] = np.diff(in_session) * 1000.0
            truth["pulse_peak_s"][role] = in_session + p.ptt_s
            ibi_s = np.diff(beats)
            truth["hr_bpm"][role] = np.interp(grid, beats[1:], 60.0 / ibi_s)
            truth["rate_bpm"][role] = np.interp(grid, t, 60.0 / period)
            a2_ms2 = (a_s * 1000.0) ** 2
            truth["rsa_ln_ms2"][role] = np.array([
                math.log(a2_ms2[(t >= s) & (t < s + EPOCH_S)].mean() / 2.0) for s in epoch_starts])
            self._ppg_wander[role] = 0.004 * self._filtered_noise(f"ppg_wander/{role}", very_slow_sos, pad) \
                + 0.002 * self._filtered_noise(f"ppg_slow/{role}", slow_sos, pad)

        self._params = params
        self._ppg_sign = -1.0 if cfg.ppg_inverted else 1.0
        self._t_lat0 = float(t[0])
        self._pulses = {}
        for role in ROLES:
            beats = self._beats[role]
            ibi = np.diff(beats)
            ibi = np.concatenate((ibi, ibi[-1:]))
            amp = params[role].ppg_ac_counts * (
                1.0 + PPG_RESP_AMPLITUDE * np.sin(np.interp(beats, t, self._resp_phase[role])))
            self._pulses[role] = (beats + params[role].ptt_s, np.sqrt(ibi / 0.857), amp)
        self._events = self._sensor_events()
        self._stream_events = {s: tuple(ev for ev in self._events if ev.stream == s and ev.kind != "motion")
                               for s in STREAMS}
        self._motion = self._motion_artefacts()
        for role in ROLES:  # the red LED shares the IR channel's sensor, hence its faults and motion
            self._stream_events[f"{role}/ppg_red"] = self._stream_events[f"{role}/ppg"]
            self._motion[f"{role}/ppg_red"] = [(a, b, PPG_RED_DC_FRACTION * amps, f, ph)
                                               for a, b, amps, f, ph in self._motion[f"{role}/ppg"]]
        self._truth = GroundTruth(
            duration_s=float(cfg.duration_s),
            segments=self._truth_segments,
            t_grid_s=grid,
            hr_bpm=truth["hr_bpm"],
            rate_bpm=truth["rate_bpm"],
            arousal={r: np.interp(grid, t, arousal[r]) for r in ROLES},
            hr_drive={r: np.interp(grid, t, hr_drive[r]) for r in ROLES},
            rsa_drive={r: np.interp(grid, t, rsa_drive[r]) for r in ROLES},
            eda_us=truth["eda_us"],
            eda_tonic_us=truth["eda_tonic_us"],
            resp_hz=truth["resp_hz"],
            beat_times_s=truth["beat_times_s"],
            ibi_ms=truth["ibi_ms"],
            pulse_peak_s=truth["pulse_peak_s"],
            rsa_epoch_start_s=epoch_starts,
            rsa_ln_ms2=truth["rsa_ln_ms2"],
            scr=truth["scr"],
            events=self._events,
            params=params,
            regulation_index=float(self._regulation_index),
            regulation_effect=float(cfg.regulation_effect),
        )
        # sensor noise on each stream's own sample grid (linearly interpolated between samples)
        self._noise = {}
        self._noise_list = {}
        for stream in STREAMS + AUX_STREAMS:
            rate = self.rates_hz[stream]
            k0 = -int(math.ceil(MARGIN_S * rate)) - 2
            k1 = int(math.ceil((cfg.duration_s + MARGIN_S) * rate)) + 2
            sd = cfg.eda_noise_us if stream.endswith("/eda") else cfg.ppg_noise_counts
            self._noise[stream] = (np.arange(k0, k1) / rate, sd * self._rng(f"noise/{stream}").standard_normal(k1 - k0))
            self._noise_list[stream] = (k0, self._noise[stream][1])
        self._samples: dict[str, np.ndarray] = {}  # filled on the first read(): truth-only users skip it

    def _scrs(self, role: str, p: PersonParams, arousal: np.ndarray) -> tuple[list[ScrEvent], np.ndarray]:
        """SCR onsets by thinning a Poisson process with rate ``r0 * exp(0.8 * arousal)``; Bateman shapes."""
        t = self._t_lat
        rng = self._rng(f"scr/{role}")
        span = t[-1] - t[0]
        lam_max = p.scr_rate_per_min / 60.0 * math.exp(0.8 * float(arousal.max()))
        n_cand = rng.poisson(lam_max * span)
        cand = np.sort(t[0] + rng.uniform(0.0, span, n_cand))
        accept_u = rng.uniform(0.0, 1.0, n_cand)
        a_at = np.interp(cand, t, arousal)
        lam = p.scr_rate_per_min / 60.0 * np.exp(0.8 * a_at)
        keep = accept_u < lam / lam_max
        onsets, a_on = cand[keep], a_at[keep]
        n = onsets.size
        amp = p.scr_amp_us * np.exp(0.5 * rng.standard_normal(n)) * np.exp(0.3 * a_on)
        tau_r = rng.uniform(0.6, 1.2, n)
        tau_d = rng.uniform(5.0, 10.0, n)
        total = np.zeros_like(t)
        events = []
        fs = LATENT_RATE_HZ
        for i in range(n):
            i0 = int(np.searchsorted(t, onsets[i]))
            i1 = min(t.size, i0 + int(12.0 * tau_d[i] * fs))
            total[i0:i1] += amp[i] * _bateman(t[i0:i1] - onsets[i], tau_r[i], tau_d[i])
            rise, _ = _bateman_peak(tau_r[i], tau_d[i])
            events.append(ScrEvent(float(onsets[i]), float(amp[i]), float(tau_r[i]), float(tau_d[i]), float(rise),
                                   _half_recovery_s(tau_r[i], tau_d[i])))
        return events, total

    def _sensor_events(self) -> tuple[SensorEvent, ...]:
        cfg = self.config
        events = list(cfg.events)
        rng = self._rng("events")
        per_s = {"contact_loss": cfg.contact_loss_per_h / 3600.0, "saturation": cfg.saturation_per_h / 3600.0,
                 "motion": cfg.motion_per_min / 60.0}
        dur_range = {"contact_loss": (5.0, 30.0), "saturation": (2.0, 10.0), "motion": (1.0, 4.0)}
        for stream in STREAMS:
            for kind, rate in per_s.items():
                if kind == "motion" and not stream.endswith("/ppg"):
                    continue
                n = rng.poisson(rate * cfg.duration_s)
                starts = np.sort(rng.uniform(0.0, cfg.duration_s, n))
                durs = rng.uniform(*dur_range[kind], n)
                for s, d in zip(starts, durs, strict=True):
                    events.append(SensorEvent(stream, kind, float(s), float(min(s + d, cfg.duration_s + MARGIN_S))))
        events.sort(key=lambda e: (e.start_s, e.stream, e.kind))
        return tuple(events)

    def _motion_artefacts(self) -> dict[str, list[tuple[float, float, np.ndarray, np.ndarray, np.ndarray]]]:
        """Per PPG stream: (start, end, amplitudes, frequencies, phases) of Hann-windowed sinusoid bursts."""
        out: dict[str, list] = {s: [] for s in STREAMS}
        for i, ev in enumerate(self._events):
            if ev.kind != "motion":
                continue
            rng = self._rng(f"motion/{i}/{ev.stream}/{ev.start_s!r}")
            ac = self._params[ev.stream.split("/")[0]].ppg_ac_counts
            out[ev.stream].append((ev.start_s, ev.end_s, ac * rng.uniform(1.0, 3.0, 3),
                                   rng.uniform(0.3, 3.0, 3), rng.uniform(0.0, 2 * np.pi, 3)))
        return out

    # ---- evaluation at arbitrary times ----------------------------------------------------------------

    def _eval(self, stream: str, t: np.ndarray) -> np.ndarray:
        """Vectorised evaluation of ``stream`` at times ``t`` (validated by the caller)."""
        role, sig = stream.split("/")
        cfg = self.config
        xp, noise_fp = self._noise[stream]
        noise = np.interp(t, xp, noise_fp)
        if sig == "eda":
            v = np.interp(t, self._t_lat, self._eda_lat[role]) + noise
            hi = cfg.eda_max_us
            open_value = EDA_OPEN_FRACTION * np.abs(noise)
        else:
            base, pulse = self._ppg_parts(role, t)
            dc_scale, ac_scale = self._ppg_scales(role, sig)
            v = dc_scale * base + ac_scale * pulse + noise
            for start, end, amps, freqs, phases in self._motion[stream]:
                sel = (t > start) & (t < end)
                if np.any(sel):
                    x = t[sel] - start
                    win = 0.5 - 0.5 * np.cos(2 * np.pi * x / (end - start))
                    v[sel] += win * (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * x + phases[:, None])).sum(0)
            hi = cfg.ppg_adc_max
            open_value = PPG_AMBIENT_COUNTS + noise
        for ev in self._stream_events[stream]:
            m = _ramp_mask(t, ev.start_s, ev.end_s)
            if not np.any(m):
                continue
            if ev.kind == "contact_loss":
                v = (1.0 - m) * v + m * open_value
            else:  # saturation: pushed beyond the range, clipped below
                v = v + m * 2.0 * hi
        return np.clip(v, 0.0, hi)

    def _ppg_scales(self, role: str, sig: str) -> tuple[float, float]:
        """(DC, pulse) multipliers of the IR model for channel ``sig`` (pulse sign = polarity)."""
        if sig == "ppg":
            return 1.0, self._ppg_sign
        return PPG_RED_DC_FRACTION, self._ppg_sign * PPG_RED_DC_FRACTION * self._params[role].ppg_red_ratio

    def _ppg_parts(self, role: str, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """IR DC level with respiratory and slow baseline wander, and the pulses (one per beat), apart."""
        p = self._params[role]
        peaks, width, amp = self._pulses[role]
        phase = np.interp(t, self._t_lat, self._resp_phase[role])
        wander = np.interp(t, self._t_lat, self._ppg_wander[role])
        base = p.ppg_dc_counts * (1.0 + PPG_RESP_BASELINE * np.sin(phase + 1.0) + wander)
        idx = np.searchsorted(peaks, t, side="right") - 1
        pulse = np.zeros_like(t)
        for off in PULSE_NEIGHBOURS:
            j = idx + off
            k = np.clip(j, 0, peaks.size - 1)
            w = width[k]
            x = t - peaks[k]
            sigma = np.where(x < 0.0, PULSE_RISE_SIGMA, PULSE_FALL_SIGMA) * w
            sys_wave = np.exp(-0.5 * (x / sigma) ** 2)
            dia_wave = p.ppg_diastolic_ratio * np.exp(-0.5 * ((x - PULSE_DIA_DELAY * w) / (PULSE_DIA_SIGMA * w)) ** 2)
            pulse += np.where((j >= 0) & (j < peaks.size), amp[k] * (sys_wave + dia_wave), 0.0)
        return base, pulse

    def _eval_scalar(self, stream: str, t: float) -> float:
        """The same model as :meth:`_eval` for one time, in plain Python (about 10x faster per call)."""
        role, sig = stream.split("/")
        cfg = self.config
        k0, noise_fp = self._noise_list[stream]
        u = t * self.rates_hz[stream] - k0
        j = min(max(int(math.floor(u)), 0), len(noise_fp) - 2)
        noise = noise_fp[j] + (u - j) * (noise_fp[j + 1] - noise_fp[j])
        ul = (t - self._t_lat0) * LATENT_RATE_HZ
        jl = min(max(int(math.floor(ul)), 0), self._t_lat.size - 2)
        fl = ul - jl

        def lat(arr: np.ndarray) -> float:
            a0 = float(arr[jl])
            return a0 + fl * (float(arr[jl + 1]) - a0)

        if sig == "eda":
            v = lat(self._eda_lat[role]) + noise
            hi = cfg.eda_max_us
            open_value = EDA_OPEN_FRACTION * abs(noise)
        else:
            p = self._params[role]
            peaks, width, amp = self._pulses[role]
            base = p.ppg_dc_counts * (1.0 + PPG_RESP_BASELINE * math.sin(lat(self._resp_phase[role]) + 1.0)
                                      + lat(self._ppg_wander[role]))
            idx = int(np.searchsorted(peaks, t, side="right")) - 1
            pulse = 0.0
            for off in PULSE_NEIGHBOURS:
                k = idx + off
                if 0 <= k < peaks.size:
                    w = float(width[k])
                    x = t - float(peaks[k])
                    sigma = (PULSE_RISE_SIGMA if x < 0.0 else PULSE_FALL_SIGMA) * w
                    pulse += float(amp[k]) * (math.exp(-0.5 * (x / sigma) ** 2) + p.ppg_diastolic_ratio * math.exp(
                        -0.5 * ((x - PULSE_DIA_DELAY * w) / (PULSE_DIA_SIGMA * w)) ** 2))
            dc_scale, ac_scale = self._ppg_scales(role, sig)
            v = dc_scale * base + ac_scale * pulse + noise
            for start, end, amps, freqs, phases in self._motion[stream]:
                if start < t < end:
                    x = t - start
                    win = 0.5 - 0.5 * math.cos(2 * math.pi * x / (end - start))
                    v += win * sum(float(a) * math.sin(2 * math.pi * float(f) * x + float(ph))
                                   for a, f, ph in zip(amps, freqs, phases, strict=True))
            hi = cfg.ppg_adc_max
            open_value = PPG_AMBIENT_COUNTS + noise
        for ev in self._stream_events[stream]:
            if not ev.start_s < t < ev.end_s:
                continue
            ramp = min(EVENT_RAMP_S, 0.5 * (ev.end_s - ev.start_s))
            m = min(1.0, (t - ev.start_s) / ramp, (ev.end_s - t) / ramp)
            if ev.kind == "contact_loss":
                v = (1.0 - m) * v + m * open_value
            else:
                v = v + m * 2.0 * hi
        return min(max(v, 0.0), hi)

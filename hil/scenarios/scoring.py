"""Scores of a scenario run against the simulator's ground truth (definitions in docs/hil.md).

* completeness: per unit and stream, the hub holds every feature block and metric the unit numbered
  (no sequence gap unless the unit was down: a power cut), no raw sequence gap, no two stored blocks
  covering the same time (duplicates), the internal time gaps of each raw stream equal the sample losses
  the unit reports (``lost_samples_<role>_<signal>``) and, with block-level simulated sensors, the injected
  ones (emulated hardware may lose more, at times set by real scheduling, but never fewer), the block
  losses the unit reports (``lost_<role>_<signal>``) equal the injected ones, nothing dropped by the
  outbox quota and the outbox empty at the end.
* time: the offset of each participant's stored PPG against the simulated signal, per 20-s chunk,
  estimated by maximising the correlation over shifts of ±60 ms; therapist and client offsets must agree
  within 10 ms in every chunk (across units too).
* science: per coupled segment and channel, windows wholly inside the segment whose data (the window and
  its lags) the hub holds complete for both people — a window that reaches into a power cut or another
  outage is left out (how many is said; completeness scores the loss itself): the median lag of the
  window's global maximum of r(τ) (``max_lag_s``) within ±0.25 s of the truth and the leader side of each
  window read alone (``dsp_ext.synchrony.leader``, the kernels' ``leader``; ARCHITECTURE §4: tau > 0 = the
  therapist leads) right in >= 95 % of the windows — stricter than dyadsync's pooled rule (docs/dsp.md "Who
  leads"), whose 120-s pool would reach across segment boundaries (anti-phase segments: Boker's trough lag and its sign; at tau = 0 the
  lag within ±0.25 s counts as right); per uncoupled segment a circular-shift surrogate test of the stored feature
  series must not be significant (p >= 0.05).
* health: while a fault lasts the unit's status history (hub DB) and its LED (sysfs tree, polled) show it;
  after it the unit is back to ``recording``. I2C glitches the drivers absorb (NACK bursts, a stalled FIFO
  read) are no sensor fault: status and LED stay ``recording``, and a stall's overflow shows in the status
  as the stream's sample loss.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from broker import store
from core.vocab import GRID_NS

from .runner import RunRecord

logger = logging.getLogger(__name__)

FEATURE_BLOCK_NS = 1_000_000_000
ALIGN_TOL_S = 0.010
LAG_TOL_S = 0.25
LEADER_MIN = 0.95
ALPHA = 0.05
TRANSITION_S = 2.0
CHUNK_S = 20.0
#: feature blocks / sync windows a stream may end early: HR is computed from beats confirmed up to ~9 s
#: later (dsp_ext PPG look-ahead), so the last seconds of HR are not computed when the session stops
TAIL_BLOCKS = {"eda": 2, "hr": 12}
#: a power cut also loses what was not yet committed before the kill: the raw block being coalesced
#: (raw_block_s = 1 s) plus the source block in flight
DOWN_SLACK_NS = 2_000_000_000


@dataclass
class Score:
    category: str
    name: str
    value: str
    target: str
    passed: bool
    detail: str = ""
    scored: bool = True  # False: reported for information, does not decide the result


@dataclass
class Report:
    scenario: str
    speed: float
    seed: int
    session: str
    wall_s: float
    scores: list[Score] = field(default_factory=list)
    workdir: str = ""  # where the run's broker files, hub database, unit data and logs are (kept)

    @property
    def passed(self) -> bool:
        return bool(self.scores) and all(s.passed for s in self.scores if s.scored)

    def failed(self) -> list[Score]:
        return [s for s in self.scores if s.scored and not s.passed]

    def add(self, category: str, name: str, value: object, target: str, passed: bool, detail: str = "",
            scored: bool = True) -> None:
        self.scores.append(Score(category, name, str(value), target, bool(passed), detail, scored))

    def table(self) -> str:
        w = max([len(s.name) for s in self.scores] + [10])
        lines = [f"scenario {self.scenario}: speed {self.speed:g}, seed {self.seed}, session {self.session}, "
                 f"{self.wall_s:.1f} s wall",
                 f"  {'category':<13}{'score':<{w + 2}}{'value':<26}{'target':<24}result"]
        for s in self.scores:
            lines.append(f"  {s.category:<13}{s.name:<{w + 2}}{s.value:<26}{s.target:<24}"
                         f"{('ok' if s.passed else 'MISS') if s.scored else 'info'}"
                         + (f"  ({s.detail})" if s.detail else ""))
        lines.append(f"  result: {'PASS' if self.passed else 'FAIL: ' + ', '.join(s.name for s in self.failed())}")
        if self.workdir:
            lines.append(f"  work directory (kept): {self.workdir}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "speed": self.speed, "seed": self.seed, "session": self.session,
                "wall_s": self.wall_s, "passed": self.passed, "workdir": self.workdir,
                "scores": [s.__dict__ for s in self.scores]}


# ------------------------------------------------------------------------------------------ helpers
def _downtimes(con, rec: RunRecord) -> dict[str, list[tuple[int, int]]]:
    """unit -> [(kill_ns, first status of the restarted process ns)] of power cuts."""
    out: dict[str, list[tuple[int, int]]] = {}
    kills = {}
    for kind, target, ns in rec.events:
        if kind == "unit_kill":
            kills[target] = ns
        elif kind == "unit_start" and target in kills:
            first = store.status_history(con, target, since_ns=ns, limit=1)
            back = first[0][0] if first else rec.stop_ns
            out.setdefault(target, []).append((kills.pop(target), int(back)))
    return out


def _inside(a: int, b: int, intervals: list[tuple[int, int]], slack_ns: int, after_ns: int | None = None) -> bool:
    """[a, b) lies in one of ``intervals`` widened by ``slack_ns`` before and ``after_ns`` (default the same) after."""
    after = slack_ns if after_ns is None else after_ns
    return any(a >= lo - slack_ns and b <= hi + after for lo, hi in intervals)


def _unit_roles(rec: RunRecord) -> dict[str, tuple[str, ...]]:
    return {u.name: u.roles for u in rec.scenario.units}


def _injected_drops(rec: RunRecord, stream: str, rate_hz: float) -> int:
    """Blocks of ``stream`` dropped by the simulated sensor inside the session."""
    dropped = rec.spec.dropped_blocks(stream, rate_hz)
    n = max(1, round(rec.spec.block_s * rate_hz))
    a = (rec.start_ns - rec.t0_ns) / 1e9 * rate_hz / n
    b = (rec.stop_ns - rec.t0_ns) / 1e9 * rate_hz / n
    return sum(1 for blk in dropped if a < blk < b - 1)


# --------------------------------------------------------------------------------------- scoring
def score(rec: RunRecord) -> Report:
    rep = Report(rec.scenario.name, rec.speed, rec.seed, rec.session, rec.wall_s, workdir=str(rec.workdir))
    con = store.connect(rec.db_path, readonly=True)
    try:
        _completeness(con, rec, rep)
        sim = rec.spec.simulator()
        _time(con, rec, rep, sim)
        _science(con, rec, rep, sim)
        _health(con, rec, rep)
    finally:
        con.close()
    return rep


def _completeness(con, rec: RunRecord, rep: Report) -> None:
    down = _downtimes(con, rec)
    L = (rec.stop_ns - rec.start_ns) / 1e9
    wiring = {u.name: u.wiring for u in rec.scenario.units}
    for unit, roles in _unit_roles(rec).items():
        intervals = down.get(unit, [])
        # feature blocks
        missing_feat = unexplained = dup = 0
        where: list[str] = []
        n_feat = 0
        for role in roles:
            for ch in ("eda", "hr"):
                rows = store.block_seqs(con, rec.session, unit, "feat", f"{role}/{ch}")
                n_feat += len(rows)
                if not rows:
                    unexplained += max(1, int(L) - 2)
                    continue
                seqs = np.array([r[0] for r in rows])
                t0s = np.array([r[1] for r in rows], dtype=np.int64)
                base = t0s[0] - seqs[0] * FEATURE_BLOCK_NS
                if np.any(t0s != base + seqs * FEATURE_BLOCK_NS):
                    dup += int(np.sum(t0s != base + seqs * FEATURE_BLOCK_NS))
                have = set(seqs.tolist())
                # the blocks that end before the stop, but the last TAIL_BLOCKS (counted from where this stream's
                # block grid lies: its first block may start seconds into the session on a loaded machine)
                last = max(int(seqs[-1]), int((rec.stop_ns - base) // FEATURE_BLOCK_NS) - 1 - TAIL_BLOCKS[ch])
                for j in range(0, last + 1):
                    if j in have:
                        continue
                    missing_feat += 1
                    a = base + j * FEATURE_BLOCK_NS
                    # HR is computed up to ~9 s late: what was not computed before the kill is lost with
                    # it, and after the restart the extractors warm up again (both up to TAIL_BLOCKS)
                    if not _inside(a, a + FEATURE_BLOCK_NS, intervals,
                                   max(DOWN_SLACK_NS, TAIL_BLOCKS[ch] * FEATURE_BLOCK_NS)):
                        unexplained += 1
                        if len(where) < 4:
                            where.append(f"{role}/{ch} #{j} at {rec.sim_s(int(a)):.0f} s")
        rep.add("completeness", f"{unit} feature blocks", f"{n_feat} stored, {missing_feat} missing",
                "0 missing (but unit down)", unexplained == 0 and dup == 0,
                f"{unexplained} unexplained ({', '.join(where)}), {dup} misplaced" if unexplained or dup else
                ("missing blocks all inside power cuts" if missing_feat else ""))
        # unit-reported losses (its last status before the stop)
        last = store.status_history(con, unit, online=True, newest_first=True, limit=1)
        dropped = last[0][2].get("dropped", {}) if last else {}
        # raw blocks and samples
        exact = wiring.get(unit, "sim") == "sim"
        raw_bad = []
        max_step_ms = 0.0
        for role in roles:
            for sig, rate in (("eda", 32.0), ("ppg", 100.0)):
                stream = f"{role}/{sig}"
                rows = store.block_seqs(con, rec.session, unit, "raw", stream)
                seqs = [r[0] for r in rows]
                seq_gaps = sum(b - a - 1 for a, b in zip(seqs, seqs[1:], strict=False) if b > a + 1)
                t, _, _ = store.read_stream(con, rec.session, stream, "raw", unit=unit)
                if t.size < 2:
                    raw_bad.append(f"{stream}: no raw data")
                    continue
                d = np.diff(t)
                period = 1e9 / rate
                overlap = int(np.sum(d < 0.1 * period))  # the same sample time twice: a duplicate
                # net missing samples: a clock-fit step (one interval long, the next short) nets to 0
                lost_samples = 0
                for i in np.nonzero(np.abs(d - period) > 0.5 * period)[0]:
                    if _inside(int(t[i]), int(t[i + 1]), intervals, DOWN_SLACK_NS):
                        continue  # unit down: nothing was measured
                    lost_samples += int(round(d[i] / period)) - 1
                steps_ms = float(np.max(np.abs(d - period))) / 1e6 if d.size else 0.0
                injected = _injected_drops(rec, stream, rate) * max(1, round(rec.spec.block_s * rate))
                reported = dropped.get(f"lost_samples_{role}_{sig}", 0)
                # emulated hardware also loses samples by itself (missed ADC scans, FIFO overflow, serial
                # unplugs/CRC errors, at times set by real scheduling): those cannot be predicted, but the
                # unit must account for every one of them exactly; block-level sensors lose only the injected
                if seq_gaps or overlap or lost_samples != reported or lost_samples < injected or \
                        (exact and lost_samples != injected):
                    raw_bad.append(f"{stream}: {seq_gaps} seq gaps, {overlap} duplicate samples, "
                                   f"{lost_samples} samples missing vs {injected} injected, {reported} reported")
                max_step_ms = max(max_step_ms, steps_ms)
        rep.add("completeness", f"{unit} raw samples", "exact" if not raw_bad else f"{len(raw_bad)} stream(s) off",
                "losses == injected", not raw_bad,
                "; ".join(raw_bad) + f"{'; ' if raw_bad else ''}largest time step {max_step_ms:.1f} ms")
        # unit-reported block losses, quota drops, final outbox
        bad = []
        for role in roles:
            for sig, rate in (("eda", 32.0), ("ppg", 100.0)):
                stream = f"{role}/{sig}"
                want = _injected_drops(rec, stream, rate)
                got = dropped.get(f"lost_{role}_{sig}", 0)
                if got != want:
                    bad.append(f"lost_{role}_{sig} {got} != injected {want}")
        quota = {k: v for k, v in dropped.items() if k.startswith("outbox_") and v}
        if quota:
            bad.append(f"outbox drops {quota}")
        final = store.status_history(con, unit, since_ns=rec.stop_ns, online=False, newest_first=True, limit=1)
        depth = final[0][2].get("buffer_depth") if final else None
        if depth != 0:
            bad.append(f"final outbox depth {depth}")
        rep.add("completeness", f"{unit} reported losses",
                ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())) or "none", "== injected, outbox 0",
                not bad, "; ".join(bad))
    # metrics of the computing unit
    unit = rec.scenario.computing_unit.name
    win, lag = rec.scenario.win_s, rec.scenario.lag_s
    expected = int((L - win - 2 * lag) // 1) + 1
    for ch in ("eda", "hr"):
        name = f"sync_{ch}"
        want = expected - 1 - TAIL_BLOCKS[ch]
        rows = store.metric_seqs(con, rec.session, unit, name)
        seqs = [r[0] for r in rows]
        holes = (seqs[-1] + 1 - len(seqs)) if seqs else 0
        starts = [r[1] for r in rows]
        dup = len(starts) - len(set(starts))
        ok = bool(seqs) and seqs[0] == 0 and holes == 0 and dup == 0 and len(seqs) >= want
        rep.add("completeness", f"{unit} {name}", f"{len(seqs)} windows, {holes} holes", f">= {want}, 0 holes",
                ok, f"{dup} duplicate windows" if dup else "")


def _offset_s(sim, stream: str, t_sim: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The shift d maximising corr(y, sim(t - d)) over ±60 ms (parabolic refinement) and its r."""
    shifts = np.arange(-0.060, 0.0601, 0.004)
    ref = np.asarray(sim.value_at(stream, (t_sim[None, :] - shifts[:, None]).ravel())).reshape(shifts.size, -1)
    yc = y - y.mean()
    rc = ref - ref.mean(axis=1, keepdims=True)
    den = np.sqrt((yc ** 2).sum() * (rc ** 2).sum(axis=1))
    r = (rc @ yc) / np.where(den > 0, den, np.nan)
    if not np.isfinite(r).any():
        return math.nan, math.nan
    i = int(np.nanargmax(r))
    d = shifts[i]
    if 0 < i < shifts.size - 1 and np.isfinite(r[i - 1]) and np.isfinite(r[i + 1]):
        den2 = r[i - 1] - 2 * r[i] + r[i + 1]
        if den2 < 0:
            d += 0.5 * (r[i - 1] - r[i + 1]) / den2 * (shifts[1] - shifts[0])
    return float(d), float(r[i])


def _time(con, rec: RunRecord, rep: Report, sim) -> None:
    owner = {role: u for u, roles in _unit_roles(rec).items() for role in roles}
    data = {}
    for role in ("therapist", "client"):
        t, v, _ = store.read_stream(con, rec.session, f"{role}/ppg", "raw", unit=owner[role])
        data[role] = (t, v.astype(np.float64))
    L = (rec.stop_ns - rec.start_ns) / 1e9
    worst = 0.0
    worst_abs = 0.0
    used = skipped = 0
    for c0 in np.arange(5.0, L - CHUNK_S, CHUNK_S):
        a = rec.start_ns + int(c0 * 1e9)
        b = a + int(CHUNK_S * 1e9)
        offs = {}
        for role, (t, v) in data.items():
            sel = (t >= a) & (t < b)
            if sel.sum() < 0.8 * CHUNK_S * 100:
                continue
            t_sim = (t[sel] - rec.t0_ns) / 1e9
            if sim.truth.event_mask(f"{role}/ppg", t_sim, ("contact_loss",)).any():
                continue
            d, r = _offset_s(sim, f"{role}/ppg", t_sim, v[sel])
            if np.isfinite(d) and r >= 0.8:
                offs[role] = d
        if len(offs) == 2:
            used += 1
            worst = max(worst, abs(offs["therapist"] - offs["client"]))
            worst_abs = max(worst_abs, abs(offs["therapist"]), abs(offs["client"]))
        else:
            skipped += 1
    rep.add("time", "therapist-client alignment", f"max {worst * 1e3:.1f} ms ({used} chunks)", "<= 10 ms",
            used > 0 and worst <= ALIGN_TOL_S,
            f"max offset vs truth {worst_abs * 1e3:.1f} ms; {skipped} chunks skipped")


def _segments(rec: RunRecord):
    from hil.physiology import Segment

    return [Segment(**s) for s in rec.spec.sim["schedule"]]


def _features(con, rec: RunRecord, ch: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each person's stored 4 Hz ``ch`` feature (times in UTC ns, values), read once per channel."""
    out = {}
    for role in ("therapist", "client"):
        t, v, _ = store.read_stream(con, rec.session, f"{role}/{ch}", "feat")
        out[role] = (t, v)
    return out


def _complete_grid(feats: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Sorted grid indices (UTC ns // GRID_NS) at which the hub holds a finite feature of both people."""
    held = [np.unique(t[np.isfinite(v)] // GRID_NS) for t, v in feats.values()]
    return np.intersect1d(held[0], held[1])


def _complete(grid: np.ndarray, lo_ns: int, hi_ns: int) -> bool:
    """True when every grid point in [lo_ns, hi_ns) is in ``grid`` (grid indices, from _complete_grid)."""
    a, b = -(-lo_ns // GRID_NS), -(-hi_ns // GRID_NS)
    return int(np.searchsorted(grid, b) - np.searchsorted(grid, a)) == b - a


def _science(con, rec: RunRecord, rep: Report, sim) -> None:
    from dsp_ext.stats import surrogate_test
    from dsp_ext.synchrony import SyncParams, leader

    unit = rec.scenario.computing_unit.name
    win, lag = rec.scenario.win_s, rec.scenario.lag_s
    t0 = rec.t0_ns
    for ch in ("eda", "hr"):
        rows = list(store.read_metrics(con, rec.session, f"sync_{ch}", unit=unit))
        ref_rows = _truth_windows(sim, ch, rec, SyncParams(win_s=win, lag_s=lag))
        feats = _features(con, rec, ch)
        grid = _complete_grid(feats)
        for seg in _segments(rec):
            a_ns = t0 + int((seg.start_s + TRANSITION_S) * 1e9)
            b_ns = t0 + int(seg.end_s * 1e9)
            a_ns = max(a_ns, rec.start_ns)
            b_ns = min(b_ns, rec.stop_ns)
            label = f"{ch} {seg.mode} {seg.start_s - rec.lead_s:.0f}-{seg.end_s - rec.lead_s:.0f} s"
            if seg.couples(ch):
                if ch not in rec.scenario.science_channels:
                    continue
                tau = seg.expected_tau_s
                # in-phase: the window's global maximum and its sign (dsp_ext.synchrony.leader on the window
                # alone; docs/dsp.md "Who leads"); anti-phase: Boker's trough lag (no leader rule for a trough)
                anti = seg.mode == "anti_phase"
                key = "antiphase_lag_s" if anti else "max_lag_s"
                spans = [(ws - int(lag * 1e9), we + int(lag * 1e9), v) for _, ws, we, v in rows]
                spans = [(lo, hi, v) for lo, hi, v in spans if lo >= a_ns and hi <= b_ns]
                inside = [v for lo, hi, v in spans if _complete(grid, lo, hi) and np.isfinite(v.get("r0", math.nan))]
                left_out = len(spans) - len(inside)
                lags = np.array([v.get(key, math.nan) for v in inside], dtype=float)
                sides = (np.sign(lags) if anti else
                         leader(np.array([v.get("max_r", math.nan) for v in inside], dtype=float), lags))
                if lags.size == 0:
                    if left_out:  # every window reached into lost data: nothing to judge (completeness did)
                        rep.add("science", label, "no complete windows", f"lag {tau:+.2f}±0.25 s", False,
                                f"all {left_out} windows touch data lost in an outage", scored=False)
                    else:
                        rep.add("science", label, "no windows", f"lag {tau:+.2f}±0.25 s", False)
                    continue
                med = float(np.nanmedian(lags)) if np.isfinite(lags).any() else math.nan
                if tau == 0:
                    right = np.abs(lags) <= LAG_TOL_S
                else:  # the leader side (ARCHITECTURE §4: tau > 0 = the therapist leads)
                    right = sides == np.sign(tau)
                frac = float(np.mean(right))
                ok = np.isfinite(med) and abs(med - tau) <= LAG_TOL_S and frac >= LEADER_MIN
                rv = [v for ws, we, v in ref_rows if ws - lag * 1e9 >= a_ns and we + lag * 1e9 <= b_ns]
                ref = np.array([v[key] for v in rv])
                ref_side = (np.sign(ref) if anti else
                            leader(np.array([v["max_r"] for v in rv], dtype=float), ref))
                ref_txt = (f"truth features: lag {np.nanmedian(ref):+.2f} s, leader "
                           f"{100 * np.mean(ref_side == np.sign(tau) if tau else np.abs(ref) <= LAG_TOL_S):.1f}%"
                           if ref.size else "no truth windows")
                gone = f" ({left_out} touching lost data left out)" if left_out else ""
                rep.add("science", label, f"lag {med:+.2f} s, leader {100 * frac:.1f}%",
                        f"{tau:+.2f}±0.25 s, >=95%", ok, f"{lags.size} windows{gone}; {ref_txt}")
            elif not seg.coupled:
                scored = ch in rec.scenario.science_channels
                series = {}
                for role, (t, v) in feats.items():
                    k = (t - a_ns) // GRID_NS
                    n = int((b_ns - a_ns) // GRID_NS)
                    x = np.full(n, np.nan)
                    sel = (k >= 0) & (k < n)
                    x[k[sel]] = v[sel]
                    series[role] = x
                params = SyncParams(win_s=win, lag_s=lag)
                try:
                    res = surrogate_test(series["therapist"], series["client"], params, n=200, seed=rec.seed)
                except Exception as exc:  # too short, no valid windows
                    rep.add("science", label, "untestable", f"p >= {ALPHA}", False, str(exc)[:120], scored)
                    continue
                ref = _truth_reference(sim, ch, (a_ns - t0) / 1e9, (b_ns - t0) / 1e9, params, rec.seed)
                rep.add("science", label, f"p = {res.p_value:.3f}", f"p >= {ALPHA} (not significant)",
                        np.isfinite(res.p_value) and res.p_value >= ALPHA,
                        f"z {res.observed:+.3f}; truth series p = {ref:.3f}"
                        + ("" if scored else "; not scored: RSA periodicity in both HR series defeats circular "
                           "surrogates"), scored)


def _truth_windows(sim, ch: str, rec: RunRecord, params) -> list[tuple[int, int, dict]]:
    """The same windowed cross-correlation on the simulator's noise-free features over the session grid
    (window start/end in UTC ns, values): what an ideal acquisition and feature extraction would give."""
    from dsp_ext.synchrony import wcc

    tr = sim.truth
    k0 = -(-rec.start_ns // GRID_NS)
    t_s = (np.arange(k0, rec.stop_ns // GRID_NS) * GRID_NS - rec.t0_ns) / 1e9
    field_ = tr.eda_us if ch == "eda" else tr.hr_bpm
    x = {r: np.interp(t_s, tr.t_grid_s, field_[r]) for r in ("therapist", "client")}
    try:
        res = wcc(x["therapist"], x["client"], params)
    except Exception:
        return []
    out = []
    for i, start in enumerate(res.window_start):
        ws = (k0 + int(start)) * GRID_NS
        out.append((ws, ws + params.win * GRID_NS, {"inphase_lag_s": float(res.inphase_lag_s[i]),
                                                     "antiphase_lag_s": float(res.antiphase_lag_s[i]),
                                                     "max_r": float(res.max_r[i]),
                                                     "max_lag_s": float(res.max_lag_s[i])}))
    return out


def _truth_reference(sim, ch: str, a_s: float, b_s: float, params, seed: int) -> float:
    """p of the same surrogate test on the simulator's own noise-free feature (EDA µS / HR from beats)."""
    from dsp_ext.stats import surrogate_test

    tr = sim.truth
    sel = (tr.t_grid_s >= a_s) & (tr.t_grid_s < b_s)
    field_ = tr.eda_us if ch == "eda" else tr.hr_bpm
    try:
        return surrogate_test(field_["therapist"][sel], field_["client"][sel], params, n=200, seed=seed).p_value
    except Exception:
        return math.nan


def _states_between(rows: list[tuple[int, str]], a: int, b: int) -> set[str]:
    return {s for t, s in rows if a <= t <= b}


def _state_at(rows: list[tuple[int, str]], t: int) -> str | None:
    before = [s for ts, s in rows if ts <= t]
    return before[-1] if before else None


def _glitch_health(con, rec: RunRecord, rep: Report, f, status, led, tol: int) -> None:
    """An I2C glitch the drivers absorb (a NACK burst within the retries, a stalled read whose FIFO overflow
    is counted) is not a sensor fault: status and LED stay ``recording`` through it; a stall's overflow shows
    in the status as the stream's sample loss (``lost_samples_<role>_<signal>``) growing within the glitch
    (+ the detection tolerance)."""
    u = next(u for u, roles in _unit_roles(rec).items() if f.target.split("/")[0] in roles)
    a = rec.ns_of_session_s(f.at_s)
    b = rec.ns_of_session_s(f.end_s) + tol
    st = _states_between(status[u], a, b) | {_state_at(status[u], a)}
    lv = _states_between(led.get(u, []), a, b) | {_state_at(led.get(u, []), a)}
    ok = st == {"recording"} and lv == {"recording"}
    shown = ""
    if f.kind == "fifo_stall":
        key = f"lost_samples_{f.target.replace('/', '_')}"
        lost = [(t, pl.get("dropped", {}).get(key, 0)) for t, _, pl in store.status_history(con, u, online=True)]
        before = max([v for t, v in lost if t <= a] or [0])
        after = max([v for t, v in lost if t <= b] or [0])
        ok = ok and after > before
        shown = f", {key} {before} -> {after}"
    rep.add("health", f"{f.kind} {f.target} {u}", f"status {'/'.join(sorted(s or '-' for s in st))}, LED "
            f"{'/'.join(sorted(s or '-' for s in lv))}{shown}",
            "recording" + (", loss reported" if f.kind == "fifo_stall" else ""), ok)


def _health(con, rec: RunRecord, rep: Report) -> None:
    tol = int(max(5.0, 2.0 * rec.speed) * 1e9)  # detection delays are real-time (paho, stale sensor)
    status = {u: [(t, s) for t, s, _ in store.status_history(con, u)] for u in _unit_roles(rec)}
    led = rec.led
    windows: list[tuple[str, list[str], str, int, int]] = []  # (what, units, state, a, b)
    ev = {}
    for kind, target, ns in rec.events:
        ev.setdefault(kind, []).append((target, ns))
    for (_, a), (_, b) in zip(ev.get("broker_kill", []), ev.get("broker_start", []), strict=False):
        windows.append(("broker outage", list(status), "buffering", a, b))
    for f in rec.scenario.faults:
        a = rec.ns_of_session_s(f.at_s)
        b = rec.ns_of_session_s(f.end_s)
        if f.kind == "contact_loss":
            unit = next(u for u, roles in _unit_roles(rec).items() if f.target.split("/")[0] in roles)
            windows.append((f"contact loss {f.target}", [unit], "sensor_fault", a, b))
        elif f.kind == "unplug":
            windows.append((f"unplug {f.target}", [f.target], "sensor_fault", a, b))
    for f in rec.scenario.faults:
        if f.kind in ("nack_burst", "fifo_stall"):
            _glitch_health(con, rec, rep, f, status, led, tol)
    for (target, a), (_, b) in zip(ev.get("unit_kill", []), ev.get("unit_start", []), strict=False):
        wills = [t for t, s in status[target] if s == "offline" and t < a]
        back = [s for t, s in status[target] if b <= t <= rec.stop_ns]
        ok = bool(wills) and "recording" in back
        rep.add("health", f"power cut {target}", f"will {'seen' if wills else 'missing'}, then "
                f"{'recording' if 'recording' in back else back[-1:] or 'nothing'}", "offline will, recording again", ok)
    for what, units, state, a, b in windows:
        for u in units:
            st_during = _states_between(status[u], a, b + tol)
            st_after = _states_between(status[u], b, rec.stop_ns)
            led_during = _states_between(led.get(u, []), a, b + tol)
            led_end = _state_at(led.get(u, []), rec.stop_ns)
            st_end = _state_at(status[u], rec.stop_ns)
            ok = (state in st_during and "recording" in st_after and st_end == "recording" and state in led_during
                  and led_end == "recording")
            rep.add("health", f"{what} {u}",
                    f"status {state if state in st_during else 'no ' + state}, LED "
                    f"{state if state in led_during else 'no ' + state}",
                    f"{state} then recording", ok,
                    f"after: status {sorted(st_after)}, LED at stop {led_end}")
    for u in status:
        st_end = _state_at(status[u], rec.stop_ns - int(0.5 * rec.speed * 1e9))
        led_end = _state_at(led.get(u, []), rec.stop_ns)
        codes = rec.exit_codes.get(u, [])
        clean = bool(codes) and codes[-1] == 0
        rep.add("health", f"{u} at session end", f"status {st_end}, LED {led_end}, exit {codes[-1:] or '-'}",
                "recording, clean exit 0", st_end == "recording" and led_end == "recording" and clean)

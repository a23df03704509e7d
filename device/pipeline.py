"""The unit's DSP pipeline: raw blocks in, outgoing messages (raw, features, metrics) out.

It has no threads and does no I/O: the daemon feeds it blocks and commands and commits what
:meth:`Pipeline.drain` returns to the outbox in one transaction together with :meth:`Pipeline.state`,
so sequence counters and queued messages always agree on disk.

Numbering (all deterministic, so a restarted unit continues without reusing a number):

* raw blocks: a per-stream counter, persisted. Source blocks are coalesced into ``raw_block_s`` blocks;
  a lost source block (sequence gap) or a time discontinuity ends a block and the next carries
  ``GAP_BEFORE``; losses are counted per stream.
* feature blocks: block ``j`` of a stream covers grid bins ``k0 + j*B .. k0 + (j+1)*B - 1`` where ``k0`` is
  the session's first 4 Hz bin and ``B = feature_block_s * 4``; missing bins are NaN.
* metrics: ``sync_<channel>`` seq = the window index since session start (dsp_ext's numbering);
  ``regulation`` seq = the epoch index.

Synchrony windows (dsp_ext.synchrony.StreamingWcc, Boker et al. 2002) are fed with the therapist and
client feature series from bin ``k0`` on; a bin that never arrives is NaN, so a window across an outage
(or a restart) is NaN rather than wrong. ``window_start_ns``/``window_end_ns`` of a sync metric are the
therapist window ``[start, start + win)``; the window is complete ``lag_s`` after its end.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from broker import wire
from core.vocab import FEATURE_RATE_HZ, GRID_NS, BlockFlags
from firmware_bridge.block import SampleBlock

from .features import make_extractor
from .outbox import OutMsg
from .sources import block_gap

logger = logging.getLogger(__name__)

SIGNAL_CHANNEL = {"eda": "eda", "ppg": "hr"}


@dataclass
class Session:
    id: str
    participants: dict[str, str]
    start_ns: int
    k0: int
    markers: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "participants": self.participants, "start_ns": self.start_ns, "k0": self.k0,
                "markers": self.markers}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Session:
        return cls(d["id"], dict(d["participants"]), int(d["start_ns"]), int(d["k0"]), int(d.get("markers", 0)))


@dataclass
class _RawAcc:
    stream: str
    rate_hz: float
    t0_ns: int = 0
    values: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    flags: int = 0

    def end_ns(self) -> int:
        return self.t0_ns + round(self.n * 1e9 / self.rate_hz)


class _FeatureBlocks:
    """Collects one feature stream's bins into fixed grid-aligned blocks.

    ``n_set`` counts the grid points of the open block that have been reached: at a session's stop only those
    are sent (a PARTIAL block ends where the data end, not padded with NaN to the block length, which made a
    recompute from the stored features see grid points the unit never had)."""

    def __init__(self, k0: int, per_block: int) -> None:
        self.k0 = k0
        self.B = per_block
        self.j: int | None = None
        self.vals = np.full(per_block, np.nan)
        self.n_set = 0

    def push(self, k: int, v: float) -> list[tuple[int, np.ndarray]]:
        if k < self.k0:
            return []
        j, i = divmod(k - self.k0, self.B)
        out = []
        if self.j is None:
            self.j = j
        if j < self.j:
            return []
        if j > self.j:
            out.append((self.j, self.vals))
            self.vals = np.full(self.B, np.nan)
            self.n_set = 0
            self.j = j
        self.vals[i] = v
        self.n_set = max(self.n_set, i + 1)
        if i == self.B - 1:
            out.append((self.j, self.vals))
            self.vals = np.full(self.B, np.nan)
            self.n_set = 0
            self.j = j + 1
        return out


class _SyncChannel:
    """Feeds therapist and client series of one channel into a streaming WCC from bin k0 on."""

    def __init__(self, channel: str, k0: int, params: Any, engine: Any) -> None:
        self.channel = channel
        self.k0 = k0
        self.params = params
        self.engine = engine
        self.n = {"therapist": 0, "client": 0}

    def push(self, role: str, k: int, v: float) -> list[tuple[int, dict[str, float]]]:
        idx = k - self.k0
        if idx < self.n[role]:
            return []  # duplicate or late
        chunk = np.full(idx - self.n[role] + 1, np.nan)
        chunk[-1] = v
        self.n[role] = idx + 1
        empty = np.empty(0)
        return self.engine.push(chunk, empty) if role == "therapist" else self.engine.push(empty, chunk)


def _load_sync() -> tuple[Any, Any] | None:
    try:
        from dsp_ext.synchrony import StreamingWcc, SyncParams
    except ImportError as exc:
        logger.warning("dsp_ext.synchrony not available (%s): no synchrony metrics", exc)
        return None
    return StreamingWcc, SyncParams


class Pipeline:
    def __init__(self, cfg: Any, *, now_ns_fn: Any = None) -> None:
        self.cfg = cfg
        self.room, self.unit = cfg.room, cfg.unit
        self.dsp = cfg.dsp
        self.rates = {s.stream: s.rate_hz for s in cfg.sensors if s.stream}
        self.session: Session | None = None
        self.clock_flags = 0  # OR-ed into every block (CLOCK_UNSYNCED)
        self.raw_seq: dict[str, int] = {}
        self.lost_blocks: dict[str, int] = defaultdict(int)
        self.lost_samples: dict[str, int] = defaultdict(int)  # in-session samples lost, all causes
        self.partner_blocks = 0
        self._out: list[OutMsg] = []
        self._last_src_seq: dict[str, int] = {}
        self._seen: set[str] = set()  # streams with a block in the open session (this process)
        self._raw: dict[str, _RawAcc] = {}
        self._raw_end: dict[str, int] = {}
        self._extractors: dict[str, Any] = {}
        self._feat_blocks: dict[str, _FeatureBlocks] = {}
        self._sync: dict[str, _SyncChannel] = {}
        self._epoch_vals: dict[int, dict[str, float]] = defaultdict(dict)  # epoch -> role-prefixed values
        self._role_epoch: dict[str, int] = {}  # role -> last epoch its HR extractor completed
        self._epoch_done = -1
        self.metrics_emitted = 0
        self._sync_impl = _load_sync()

    # ----------------------------------------------------------------------------------- sessions
    def start(self, session_id: str, participants: dict[str, str], start_ns: int,
              resume: dict[str, Any] | None = None) -> None:
        """Open a session (``resume``: the persisted state of the same session after a restart)."""
        if resume:
            self.session = Session.from_json(resume["session"])
            self.raw_seq = {k: int(v) for k, v in resume.get("raw_seq", {}).items()}
            self._epoch_done = int(resume.get("epoch_done", -1))
        else:
            k0 = -(-start_ns // GRID_NS)  # first bin starting at or after the start
            self.session = Session(session_id, dict(participants), start_ns, k0)
            self.raw_seq = {}
            self._epoch_done = -1
        k0 = self.session.k0
        per_block = max(1, round(self.dsp.feature_block_s * FEATURE_RATE_HZ))
        self._raw.clear()
        self._raw_end.clear()
        self._seen.clear()
        self._last_src_seq.clear()
        self._extractors = {}
        self._feat_blocks = defaultdict(lambda: _FeatureBlocks(k0, per_block))
        self._epoch_vals.clear()
        self._role_epoch.clear()
        self._sync.clear()
        if self._sync_impl and self.cfg.dyad.compute:
            streaming_wcc, sync_params = self._sync_impl
            params = sync_params(rate_hz=FEATURE_RATE_HZ, win_s=self.dsp.win_s, inc_s=self.dsp.inc_s,
                                 lag_s=self.dsp.lag_s, peak_window=self.dsp.peak_window)
            for ch in self.dsp.channels:
                self._sync[ch] = _SyncChannel(ch, k0, params, streaming_wcc(params))

    def start_refusal(self, session_id: str, participants: dict[str, str]) -> str | None:
        """Why a ``start`` of ``session_id`` with ``participants`` must be refused now, or None.

        With no session open any start is fine; a start of the open session with the same codes is a
        repetition (accepted again, nothing changes); with other codes, or for another session, it is refused:
        a running session's participant codes never change."""
        cur = self.session
        if cur is None:
            return None
        if cur.id != session_id:
            return f"session {cur.id!r} is running; stop it first"
        if dict(participants) != cur.participants:
            def codes(p: dict[str, str]) -> str:
                return f"therapist {p.get('therapist')!r}, client {p.get('client')!r}"
            return (f"session {cur.id!r} is running with {codes(cur.participants)}; a start with other codes "
                    f"({codes(participants)}) is refused: stop the session and start a new one")
        return None

    def stop(self) -> None:
        """Close the session: flush partial raw and feature blocks (flagged PARTIAL)."""
        if self.session is None:
            return
        for stream in list(self._raw):
            self._flush_raw(stream, partial=True)
        for stream, fb in self._feat_blocks.items():
            if fb.j is not None and fb.n_set and np.isfinite(fb.vals[:fb.n_set]).any():
                self._emit_feat(stream, fb.j, fb.vals[:fb.n_set], partial=True)
        self.session = None

    def shutdown_flush(self) -> None:
        """Before a clean exit with the session still open: flush raw blocks (the session resumes later)."""
        for stream in list(self._raw):
            self._flush_raw(stream, partial=True)

    def state(self) -> dict[str, Any]:
        """Persistent state to commit with the messages of :meth:`drain`."""
        if self.session is None:
            return {"session": None}
        return {"session": {"session": self.session.to_json(), "raw_seq": dict(self.raw_seq),
                            "epoch_done": self._epoch_done}}

    def drain(self) -> list[OutMsg]:
        out, self._out = self._out, []
        return out

    # -------------------------------------------------------------------------------------- input
    def on_block(self, block: SampleBlock, lost_before: int = 0) -> None:
        """A raw block from a local source; ``lost_before``: samples its source lost just before it that are
        not a sequence gap (see ``Source.sample_losses``)."""
        stream = block.stream
        gap = block_gap(self._last_src_seq.get(stream), block.seq)
        self._last_src_seq[stream] = block.seq
        if gap:
            self.lost_blocks[stream] += gap
        if self.session is None:
            return
        if block.t0_ns + block.duration_ns <= self.session.start_ns:
            return
        if (gap or lost_before) and stream in self._seen:  # losses inside the session only
            # a skipped block is taken to be as long as this one (sources keep a fixed block size)
            self.lost_samples[stream] += gap * block.n + lost_before
        self._seen.add(stream)
        flags = block.flags | self.clock_flags
        if self.dsp.publish_raw:
            self._add_raw(block, flags, gap > 0)
        ex = self._extractors.get(stream)
        if ex is None:  # created on the first block: serial firmware announces its streams at run time
            if block.signal not in SIGNAL_CHANNEL:
                return
            ex = self._extractors[stream] = make_extractor(
                block.signal, block.rate_hz, self.session.k0, self._epoch_bins,
                hr_grid=self.dsp.hr_grid)
        role = block.role
        channel = ex.channel
        for k, v in ex.push(block):
            self._feature(role, channel, k, v, flags)
        if ex.channel == "hr":
            ex.take_beats()
            for e, vals in ex.take_epochs():
                if e > self._epoch_done:
                    self._epoch_vals[e].update({f"{role}_{k}": v for k, v in vals.items()})
                self._role_epoch[role] = max(e, self._role_epoch.get(role, -1))
            self._regulation()

    def on_partner_block(self, block: SampleBlock, session: str) -> None:
        """A 4 Hz feature block of the partner unit (over MQTT)."""
        if self.session is None or session != self.session.id:
            return
        self.partner_blocks += 1
        channel = block.signal
        sync = self._sync.get(channel)
        if sync is None:
            return
        k_first = round(block.t0_ns / GRID_NS)
        for i, v in enumerate(block.values.astype(np.float64)):
            self._collect_metrics(channel, sync.push(block.role, k_first + i, float(v)))

    # ------------------------------------------------------------------------------------- raw
    def _add_raw(self, block: SampleBlock, flags: int, gap: bool) -> None:
        acc = self._raw.get(block.stream)
        half_sample = 0.5e9 / block.rate_hz
        end = self._raw_end.get(block.stream)
        if end is not None and block.t0_ns - end > half_sample:
            gap = True  # samples missing in time even without a sequence gap (e.g. a sensor reopened)
        if acc is not None and (gap or abs(acc.end_ns() - block.t0_ns) > half_sample or acc.rate_hz != block.rate_hz):
            self._flush_raw(block.stream)
            acc = None
        self._raw_end[block.stream] = block.t0_ns + block.duration_ns
        if acc is None:
            acc = _RawAcc(block.stream, block.rate_hz, block.t0_ns)
            if gap:
                acc.flags |= BlockFlags.GAP_BEFORE
            self._raw[block.stream] = acc
        acc.values.append(block.values)
        acc.n += block.n
        acc.flags |= flags
        if acc.n >= self.dsp.raw_block_s * block.rate_hz - 1e-9:
            self._flush_raw(block.stream)

    def _flush_raw(self, stream: str, partial: bool = False) -> None:
        acc = self._raw.pop(stream, None)
        if acc is None or acc.n == 0 or self.session is None:
            return
        flags = acc.flags | (BlockFlags.PARTIAL if partial and acc.n < self.dsp.raw_block_s * acc.rate_hz else 0)
        seq = self.raw_seq.get(stream, 0)
        self.raw_seq[stream] = seq + 1
        b = SampleBlock(stream, seq & 0xFFFFFFFF, acc.t0_ns, acc.rate_hz, np.concatenate(acc.values), int(flags))
        self._out.append(OutMsg(wire.raw_topic(self.room, self.unit, stream),
                                wire.encode_block(b, self.session.id), "raw"))

    # -------------------------------------------------------------------------------- features
    def _feature(self, role: str, channel: str, k: int, v: float, flags: int) -> None:
        assert self.session is not None
        # Features travel and are stored as float32: round here so that synchrony recomputed from the hub's
        # stored features equals the live metrics exactly.
        v = float(np.float32(v))
        stream = f"{role}/{channel}"
        for j, vals in self._feat_blocks[stream].push(k, v):
            self._emit_feat(stream, j, vals, flags=flags)
        sync = self._sync.get(channel)
        if sync is not None and k >= self.session.k0:
            self._collect_metrics(channel, sync.push(role, k, v))

    def _emit_feat(self, stream: str, j: int, vals: np.ndarray, *, flags: int = 0, partial: bool = False) -> None:
        assert self.session is not None
        fb = self._feat_blocks[stream]
        t0 = (self.session.k0 + j * fb.B) * GRID_NS
        f = flags | self.clock_flags | (BlockFlags.INVALID if np.isnan(vals).any() else 0)
        f |= BlockFlags.PARTIAL if partial else 0
        b = SampleBlock(stream, j, t0, FEATURE_RATE_HZ, vals, int(f))
        self._out.append(OutMsg(wire.feat_topic(self.room, self.unit, stream),
                                wire.encode_block(b, self.session.id), "feat"))

    # --------------------------------------------------------------------------------- metrics
    def _collect_metrics(self, channel: str, windows: list[tuple[int, dict[str, float]]]) -> None:
        assert self.session is not None
        sync = self._sync[channel]
        p = sync.params
        for start, values in windows:
            seq = (start - p.lag) // p.inc
            ws = (self.session.k0 + start) * GRID_NS
            we = ws + p.win * GRID_NS
            m = wire.Metric(self.session.id, seq, f"sync_{channel}", ws, we, values)
            self._out.append(OutMsg(wire.metric_topic(self.room, self.unit, m.name), m.encode(), "metric"))
            self.metrics_emitted += 1

    @property
    def _epoch_bins(self) -> int:
        return round(self.dsp.regulation_epoch_s * FEATURE_RATE_HZ)

    def _regulation(self) -> None:
        """Emit every regulation epoch that all locally measured people have completed."""
        assert self.session is not None
        roles = {st.split("/")[0] for st, e in self._extractors.items() if e.channel == "hr"}
        if not roles or any(r not in self._role_epoch for r in roles):
            return
        done = min(self._role_epoch[r] for r in roles)
        eb = self._epoch_bins
        while self._epoch_done < done:
            e = self._epoch_done + 1
            values = self._epoch_vals.pop(e, {})
            ws = (self.session.k0 + e * eb) * GRID_NS
            m = wire.Metric(self.session.id, e, "regulation", ws, ws + eb * GRID_NS, values)
            self._out.append(OutMsg(wire.metric_topic(self.room, self.unit, m.name), m.encode(), "metric"))
            self._epoch_done = e

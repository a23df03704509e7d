"""``dyadsync demo``: a simulated therapy room, end to end, on one machine.

It starts a room broker (Mosquitto as a child process when installed, else an embedded broker), the hub
recorder writing to SQLite, and one simulated unit that reads a simulated dyad (therapist and client EDA
and PPG), computes 4 Hz features and windowed synchrony, and publishes raw blocks, features and metrics
at QoS 1. A 10-minute session runs faster than real time; a summary then compares what the unit sent
(acknowledged by the broker) with what the hub stored. Exit status 0 only if every message was stored.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from tqdm import tqdm

from broker import store, wire
from broker.auth import RoomAuth
from broker.embedded import start_room_broker
from broker.errors import BrokerError
from broker.recorder import Recorder
from firmware_bridge.block import SampleBlock

logger = logging.getLogger(__name__)

ROOM = "demo-room"
UNIT = "unit1"
FEATURE_RATE_HZ = 4.0
GRID_NS = 250_000_000  # the shared 4 Hz UTC feature grid


def demo_schedule(duration_s: float) -> list:
    """Uncoupled, therapist-led, client-led, anti-phase and uncoupled again, in equal parts."""
    from hil.physiology import Segment

    edges = np.linspace(0, duration_s, 6)
    modes = [("uncoupled", 0.0), ("therapist_led", 3.0), ("client_led", 2.0), ("anti_phase", 0.0), ("uncoupled", 0.0)]
    return [Segment(float(a), float(b), mode=m, lag_s=lag, gain=0.8, channel="both")
            for (a, b), (m, lag) in zip(zip(edges[:-1], edges[1:], strict=True), modes, strict=True)]


@dataclass
class _Publisher:
    """QoS 1 publishing with counts of what the broker acknowledged (PUBACK).

    paho calls ``on_publish`` from its network thread while holding its own lock, so ``publish`` must not
    hold ours across ``client.publish`` (that would deadlock); a PUBACK that overtakes the registration
    of its message id is remembered in ``early``.
    """

    client: mqtt.Client
    sent: Counter = field(default_factory=Counter)
    pending: dict = field(default_factory=dict)
    early: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.lock:
            kind = self.pending.pop(mid, None)
            if kind is None:
                self.early[mid] = not reason_code.is_failure
            elif not reason_code.is_failure:
                self.sent[kind] += 1

    def publish(self, topic: str, payload: bytes, kind: str, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        with self.lock:
            if info.mid in self.early:
                if self.early.pop(info.mid):
                    self.sent[kind] += 1
            else:
                self.pending[info.mid] = kind

    def wait_all_acked(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    return True
            time.sleep(0.02)
        return False


def _connect(host: str, port: int, user: str, password: str, client_id: str, will: bytes | None = None,
             will_topic: str | None = None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    c.username_pw_set(user, password)
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    if will is not None:
        c.will_set(will_topic, will, qos=1, retain=True)
    connected = threading.Event()
    failed: list = []

    def on_connect(client, userdata, flags, reason_code, properties):
        (failed.append(reason_code) if reason_code.is_failure else connected.set())

    c.on_connect = on_connect
    c.connect(host, port)
    c.loop_start()
    deadline = time.monotonic() + 10
    while not connected.is_set() and not failed and time.monotonic() < deadline:
        time.sleep(0.01)
    if not connected.is_set():
        c.loop_stop()
        raise BrokerError(f"{user} could not connect to {host}:{port}: {failed[0] if failed else 'timeout'}")
    return c


class _FeaturePairs:
    """4 Hz features of both people from the unit's own extractors (``device.features``: dsp_ext EDA and
    PPG streams on the shared UTC grid), paired bin by bin for the synchrony kernel.

    Features are rounded to float32 before synchrony, as the hub stores them, so the live metrics can be
    recomputed exactly from what the hub keeps."""

    def __init__(self, origin_bin: int, eda_rate_hz: float, ppg_rate_hz: float) -> None:
        from device.features import make_extractor

        self.extractors = {
            f"{role}/{signal}": make_extractor(signal, rate, origin_bin=origin_bin)
            for role in ("therapist", "client")
            for signal, rate in (("eda", eda_rate_hz), ("ppg", ppg_rate_hz))
        }
        self.pending: dict[str, dict[int, float]] = {f"{r}/{c}": {} for r in ("therapist", "client") for c in ("eda", "hr")}
        self.next_bin = {"eda": origin_bin, "hr": origin_bin}

    def push(self, block: SampleBlock) -> tuple[str, list[tuple[int, float]]]:
        """Raw block in; (feature stream name, [(grid bin, value), ...]) out."""
        ex = self.extractors[block.stream]
        out = [(k, float(np.float32(v))) for k, v in ex.push(block)]
        name = f"{block.role}/{ex.channel}"
        self.pending[name].update(out)
        return name, out

    def pairs(self, channel: str) -> tuple[int, np.ndarray, np.ndarray]:
        """Bins ready for both people: (first bin, therapist values, client values)."""
        t, c = self.pending[f"therapist/{channel}"], self.pending[f"client/{channel}"]
        first = k = self.next_bin[channel]
        tv, cv = [], []
        while True:
            if k in t and k in c:
                tv.append(t.pop(k))
                cv.append(c.pop(k))
            elif t and c and max(t) > k + 8 and max(c) > k + 8:  # a bin one side will never emit: invalid
                tv.append(t.pop(k, math.nan))
                cv.append(c.pop(k, math.nan))
            else:
                break
            k += 1
        self.next_bin[channel] = k
        return first, np.asarray(tv), np.asarray(cv)


def _runs(points: list[tuple[int, float]]) -> list[tuple[int, np.ndarray]]:
    """Split (bin, value) points into runs of consecutive bins."""
    runs: list[tuple[int, list[float]]] = []
    for k, v in points:
        if runs and runs[-1][0] + len(runs[-1][1]) == k:
            runs[-1][1].append(v)
        else:
            runs.append((k, [v]))
    return [(k, np.asarray(v)) for k, v in runs]


def run_demo(args: argparse.Namespace) -> int:
    from dsp_ext.synchrony import StreamingWcc, SyncParams
    from hil.physiology import DyadSimulator, SimConfig

    data_dir = Path(args.data_dir or f"demo-data/{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    duration_s = int(round(args.minutes * 60))
    session = f"demo-{uuid.uuid4().hex[:8]}"
    auth = RoomAuth.generate(ROOM, [UNIT])
    print(f"dyadsync demo: room {ROOM}, session {session}, {args.minutes:g} simulated minutes at {args.speed:g}x")

    broker = start_room_broker(data_dir / "broker", auth, prefer=args.broker)
    print(f"  broker: {broker.kind} on {broker.host}:{broker.port} (anonymous clients refused)")
    db_path = data_dir / "hub.sqlite"
    recorder = Recorder(db_path, ROOM, broker.host, broker.port, *auth.service_user("recorder")).start()
    unit_client = None
    console = None
    try:
        offline = wire.Status(unit=UNIT, state="offline", time_ns=time.time_ns()).encode()
        unit_client = _connect(broker.host, broker.port, UNIT, auth.units[UNIT], f"dyadsync-{UNIT}",
                               will=offline, will_topic=wire.status_topic(ROOM, UNIT))
        pub = _Publisher(unit_client)
        unit_client.on_publish = pub.on_publish
        console = _connect(broker.host, broker.port, *auth.service_user("console"), "dyadsync-console")
        t_start_ns = time.time_ns() // GRID_NS * GRID_NS  # the session starts on the 4 Hz UTC grid
        start = wire.Command(id=f"start-{session}", cmd="start", session=session, time_ns=t_start_ns,
                             participants={"therapist": "T01", "client": "C01"})
        console.publish(wire.cmd_topic(ROOM), start.encode(), qos=1).wait_for_publish(10)

        def status(state: str) -> None:
            s = wire.Status(unit=UNIT, state=state, time_ns=time.time_ns(), version="demo", session=session,
                            sensors={"therapist/eda": "ok", "therapist/ppg": "ok", "client/eda": "ok", "client/ppg": "ok"},
                            buffer_depth=len(pub.pending), clock_synced=None)
            pub.publish(wire.status_topic(ROOM, UNIT), s.encode(), "status", retain=True)

        status("recording")
        sim = DyadSimulator(SimConfig(seed=args.seed, duration_s=duration_s, schedule=demo_schedule(duration_s)))
        params = SyncParams()
        wcc = {"eda": StreamingWcc(params), "hr": StreamingWcc(params)}
        origin_bin = t_start_ns // GRID_NS
        features = _FeaturePairs(origin_bin, sim.config.eda_rate_hz, sim.config.ppg_rate_hz)
        seqs: Counter = Counter()
        metric_seq: Counter = Counter()
        t_wall0 = time.monotonic()
        for sec in tqdm(range(duration_s), desc="simulated session", unit="s", disable=args.quiet):
            chunk = sim.read(1.0)
            t0_ns = t_start_ns + sec * 1_000_000_000
            for stream, values in chunk.items():
                rate = sim.config.eda_rate_hz if stream.endswith("/eda") else sim.config.ppg_rate_hz
                block = SampleBlock(stream, seqs[("raw", stream)], t0_ns, rate, values)
                seqs[("raw", stream)] += 1
                pub.publish(wire.raw_topic(ROOM, UNIT, stream), wire.encode_block(block, session), "raw")
                feat_stream, points = features.push(block)
                for k, vals in _runs(points):
                    fb = SampleBlock(feat_stream, seqs[("feat", feat_stream)], k * GRID_NS, FEATURE_RATE_HZ, vals)
                    seqs[("feat", feat_stream)] += 1
                    pub.publish(wire.feat_topic(ROOM, UNIT, feat_stream), wire.encode_block(fb, session), "feat")
            for signal, w in wcc.items():
                first_bin, tv, cv = features.pairs(signal)
                if not tv.size:
                    continue
                for start_idx, values in w.push(tv, cv):
                    ws = t_start_ns + start_idx * GRID_NS
                    name = f"sync_{signal}"
                    m = wire.Metric(session=session, seq=metric_seq[name], name=name, window_start_ns=ws,
                                    window_end_ns=ws + int(params.win_s * 1e9), values=values)
                    metric_seq[name] += 1
                    pub.publish(wire.metric_topic(ROOM, UNIT, name), m.encode(), "metric")
            if sec % 10 == 0:
                status("recording")
            lag = t_wall0 + (sec + 1) / args.speed - time.monotonic()
            if lag > 0:
                time.sleep(lag)
        status("idle")
        stop = wire.Command(id=f"stop-{session}", cmd="stop", session=session, time_ns=time.time_ns())
        console.publish(wire.cmd_topic(ROOM), stop.encode(), qos=1).wait_for_publish(10)
        all_acked = pub.wait_all_acked(30)
        expected = {k: pub.sent[k] for k in ("raw", "feat", "metric")}
        deadline = time.monotonic() + 60
        con = store.connect(db_path, readonly=True)
        while time.monotonic() < deadline:
            stored = store.stored_counts(con, UNIT, session)
            if stored == expected and recorder.pending() == 0:
                break
            time.sleep(0.1)
        stored = store.stored_counts(con, UNIT, session)
        summary = _summary(con, session)
        segments = _by_segment(con, session, t_start_ns, sim.config.schedule, params.win_s)
        n_gaps = len(store.gaps(con, session))
        malformed = recorder.counts["malformed"]
        con.close()
    finally:
        for c in (unit_client, console):
            if c is not None:
                c.disconnect()
                c.loop_stop()
        recorder.stop()
        broker.stop()

    ok = all_acked and stored == expected and n_gaps == 0 and malformed == 0
    _print_table(expected, stored, summary, n_gaps, malformed)
    _print_segments(segments)
    print(f"\nData: hub database {db_path}\n      broker files {data_dir / 'broker'}")
    print("Result: " + ("OK, the hub stored every message the unit sent." if ok else "FAILED: the hub is missing messages."))
    return 0 if ok else 1


def _summary(con, session: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for signal in ("eda", "hr"):
        rows = [v for *_, v in store.read_metrics(con, session, f"sync_{signal}")]
        out[signal] = {
            key: float(np.nanmean([r.get(key, math.nan) for r in rows])) if rows else math.nan
            for key in ("therapist_led", "client_led", "inphase_z", "antiphase_z")
        }
        out[signal]["windows"] = float(len(rows))
    return out


def _by_segment(con, session: str, t_start_ns: int, schedule, win_s: float) -> list[tuple]:
    """Mean therapist-led and client-led z of the windows that lie wholly inside each simulated segment."""
    rows = []
    for signal in ("eda", "hr"):
        metrics = [(ws, v) for _, ws, _, v in store.read_metrics(con, session, f"sync_{signal}")]
        for seg in schedule:
            a = t_start_ns + int(seg.start_s * 1e9)
            b = t_start_ns + int((seg.end_s - win_s) * 1e9)
            inside = [v for ws, v in metrics if a <= ws <= b]
            tl = float(np.nanmean([v["therapist_led"] for v in inside])) if inside else math.nan
            cl = float(np.nanmean([v["client_led"] for v in inside])) if inside else math.nan
            rows.append((signal, seg, len(inside), tl, cl))
    return rows


def _print_segments(rows) -> None:
    print("\n  by simulated segment (truth)            windows  therapist-led  client-led  stronger side")
    for signal, seg, n, tl, cl in rows:
        truth = f"{seg.mode}" + (f" {seg.lag_s:g} s" if seg.lag_s else "")
        side = "-" if not n else ("therapist" if tl > cl else "client")
        print(f"  {signal:<4}{seg.start_s:>5.0f}-{seg.end_s:<5.0f}s {truth:<22}{n:>8}{tl:>15.3f}{cl:>12.3f}  {side}")


def _print_table(expected, stored, summary, n_gaps, malformed) -> None:
    print("\n  messages      sent (acked)   stored at hub")
    for kind in ("raw", "feat", "metric"):
        mark = "" if expected[kind] == stored[kind] else "   <-- MISMATCH"
        print(f"  {kind:<12}{expected[kind]:>14}{stored[kind]:>16}{mark}")
    print(f"  {'total':<12}{sum(expected.values()):>14}{sum(stored.values()):>16}")
    print(f"  gaps in sequence numbers: {n_gaps}; malformed messages: {malformed}")
    print("\n  synchrony (mean Fisher z)  windows  therapist-led  client-led  in-phase peak  anti-phase peak")
    for signal, s in summary.items():
        print(f"  {signal:<26}{int(s['windows']):>8}{s['therapist_led']:>15.3f}{s['client_led']:>12.3f}"
              f"{s['inphase_z']:>15.3f}{s['antiphase_z']:>17.3f}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run a simulated therapy room end to end (no hardware, no root, no installed broker needed)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=10.0, help="simulated session length in minutes (default 10)")
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall-clock second (default 60)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated dyad (default 1)")
    p.add_argument("--data-dir", help="where the hub database and broker files go (default demo-data/<time>)")
    p.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                   help="auto: Mosquitto if installed, else the embedded broker (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    if args.minutes <= 0 or args.speed <= 0:
        print("dyadsync demo: --minutes and --speed must be positive", file=sys.stderr)
        return 2
    return run_demo(args)

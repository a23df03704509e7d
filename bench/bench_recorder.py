"""Benchmark: the hub recorder under realistic room traffic from many simulated units (real Mosquitto).

A load generator (a separate process, so it does not share the recorder's interpreter) runs N simulated
units, each logged in with its own generated account and publishing its real topic mix:

    raw client/eda 32 Hz and raw therapist/eda 32 Hz in 8-sample blocks    4 + 4 msg/s
    raw client/ppg and therapist/ppg 100 Hz in 25-sample blocks              4 + 4 msg/s
    feat eda/hr for both roles at 4 Hz, 1-sample blocks                      4 x 4 msg/s
    metric sync_eda and sync_hr, one window per second                       2 msg/s
    status every 5 s                                                         0.2 msg/s

i.e. about 34 messages/s per unit in real time; the generator runs the room's clock ``speed`` times faster
to offer thousands of messages per second. Scenarios: live load at several offered rates, and a backlog
drain (the recorder was away, the broker queued everything in its persistent session). Every scenario
checks zero loss: every (unit, stream, seq) sent is stored exactly once and no gap exists.

Run: ``.venv/bin/python bench/bench_recorder.py`` (about a minute). Prints a table.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker import store, wire  # noqa: E402
from broker.auth import RoomAuth  # noqa: E402
from broker.mosquitto import MosquittoProcess, write_broker_files  # noqa: E402
from broker.mqtt import client_id, make_client  # noqa: E402
from broker.recorder import Recorder  # noqa: E402
from firmware_bridge.block import SampleBlock  # noqa: E402

ROOM = "bench"
T0_NS = 1_790_000_000_000_000_000
RECORDER_ID = "bench-recorder"  # one recorder identity, as on a hub: no stale persistent sessions pile up


def unit_schedule(unit: str, seconds: int, session: str) -> list[tuple[float, str, bytes]]:
    """(room time in s, topic, payload) for one unit over ``seconds`` of room time.

    Each session starts at its own room time (status rows are keyed by unit and time, as in a real room)."""
    t0_ns = T0_NS + (zlib.crc32(session.encode()) % 10**6) * 10**10
    rng = np.random.default_rng(zlib.crc32(unit.encode()))
    out: list[tuple[float, str, bytes]] = []
    streams = [("raw", "client/eda", 32.0, 8), ("raw", "therapist/eda", 32.0, 8),
               ("raw", "client/ppg", 100.0, 25), ("raw", "therapist/ppg", 100.0, 25),
               ("feat", "client/eda", 4.0, 1), ("feat", "therapist/eda", 4.0, 1),
               ("feat", "client/hr", 4.0, 1), ("feat", "therapist/hr", 4.0, 1)]
    for kind, stream, rate, per in streams:
        topic = (wire.raw_topic if kind == "raw" else wire.feat_topic)(ROOM, unit, stream)
        n_blocks = int(seconds * rate / per)
        for seq in range(n_blocks):
            t = seq * per / rate
            values = rng.standard_normal(per).astype(np.float32)
            blk = SampleBlock(stream, seq, t0_ns + int(t * 1e9), rate, values)
            out.append((t, topic, wire.encode_block(blk, session)))
    for name in ("sync_eda", "sync_hr"):
        for k in range(seconds):
            m = wire.Metric(session, k, name, t0_ns + k * 10**9, t0_ns + (k + 30) * 10**9,
                            {"r0": float(rng.uniform(-1, 1)), "peak_z": float(rng.normal())})
            out.append((float(k), wire.metric_topic(ROOM, unit, name), m.encode()))
    for k in range(0, seconds, 5):
        s = wire.Status(unit=unit, state="recording", time_ns=t0_ns + k * 10**9, session=session)
        out.append((float(k), wire.status_topic(ROOM, unit), s.encode()))
    out.sort(key=lambda x: x[0])
    return out


def generator(host: str, port: int, creds: dict[str, str], seconds: int, speed: float, session: str,
              result: mp.Queue) -> None:
    """Publish every unit's schedule, paced at ``speed`` x real time; report (sent, elapsed_s)."""
    clients = {}
    for unit, pw in creds.items():
        c = make_client(client_id(f"bench-{unit}"), username=unit, password=pw, max_inflight=200, max_queued=0)
        c.connect(host, port)
        c.loop_start()
        clients[unit] = c
    merged = sorted(((t, unit, topic, payload) for unit in creds
                     for t, topic, payload in unit_schedule(unit, seconds, session)), key=lambda x: x[0])
    time.sleep(0.5)
    infos = []
    t_start_wall = time.time()
    t_start = time.perf_counter()
    for t, unit, topic, payload in merged:
        due = t_start + t / speed
        delay = due - time.perf_counter()
        if delay > 0.002:
            time.sleep(delay)
        infos.append(clients[unit].publish(topic, payload, qos=1))
    for i in infos:
        i.wait_for_publish(60)
    elapsed = time.perf_counter() - t_start
    for c in clients.values():
        c.disconnect()
        c.loop_stop()
    result.put((len(merged), elapsed, t_start_wall))


def _result(q: mp.Queue, p: mp.Process) -> tuple:
    import queue

    while True:
        try:
            return q.get(timeout=1)
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"load generator died (exit code {p.exitcode})") from None


def expected_counts(n_units: int, seconds: int) -> int:
    return sum(len(unit_schedule(f"u{i:03d}", seconds, "x")) for i in range(n_units))


def check_loss(db: Path, session: str, sent: int) -> tuple[int, int, int]:
    """(stored unique messages for the session, gaps, duplicates rows) — duplicates must be 0 by the key."""
    con = store.connect(db, readonly=True)
    blocks = con.execute("SELECT COUNT(*) FROM blocks WHERE session=?", (session,)).fetchone()[0]
    metrics = con.execute("SELECT COUNT(*) FROM metrics WHERE session=?", (session,)).fetchone()[0]
    status = con.execute("SELECT COUNT(*) FROM status WHERE session=?", (session,)).fetchone()[0]
    gaps = len(store.gaps(con, session))
    con.close()
    return blocks + metrics + status, gaps, 0


def run_live(files, auth: RoomAuth, db: Path, n_units: int, seconds: int, speed: float, label: str) -> dict:
    session = f"live-{label.replace('/', 'per')}"
    user, pw = auth.service_user("recorder")
    rec = Recorder(db, ROOM, files.host, files.port, user, pw, client_id=RECORDER_ID).start()
    creds = {u: auth.units[u] for u in list(auth.units)[:n_units]}
    q: mp.Queue = mp.Queue()
    stored_before = sum(v for k, v in rec.counts.items() if k.startswith("stored_") or k in ("duplicate", "malformed"))
    p = mp.Process(target=generator, args=(files.host, files.port, creds, seconds, speed, session, q))
    p.start()
    sent, gen_elapsed, t_start_wall = _result(q, p)
    p.join(30)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stored = sum(v for k, v in rec.counts.items() if k.startswith("stored_") or k in ("duplicate", "malformed")) - stored_before
        if stored >= sent:
            break
        time.sleep(0.005)
    t_done = time.time() - t_start_wall  # first publish to last message stored
    rec.stop()
    unique, gaps, _ = check_loss(db, session, sent)
    return {"scenario": f"live {label}", "units": n_units, "messages": sent,
            "offered_msg_s": sent / gen_elapsed, "recorded_msg_s": unique / max(t_done, 1e-9),
            "lost": sent - unique, "gaps": gaps, "malformed": rec.counts["malformed"]}


def run_backlog(files, auth: RoomAuth, db: Path, n_units: int, seconds: int) -> dict:
    """Recorder away while the room publishes (the broker queues for its persistent session); then drain."""
    session = "backlog"
    user, pw = auth.service_user("recorder")
    # Register the persistent session (subscription) first, then go away.
    Recorder(db, ROOM, files.host, files.port, user, pw, client_id=RECORDER_ID).start().stop()
    creds = {u: auth.units[u] for u in list(auth.units)[:n_units]}
    q: mp.Queue = mp.Queue()
    p = mp.Process(target=generator, args=(files.host, files.port, creds, seconds, 1e9, session, q))
    p.start()
    sent, _, _ = _result(q, p)
    p.join(30)
    rec = Recorder(db, ROOM, files.host, files.port, user, pw, client_id=RECORDER_ID)
    t0 = time.perf_counter()
    rec.start()
    done = threading.Event()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not done.is_set():
        if sum(v for k, v in rec.counts.items() if k.startswith("stored_") or k in ("duplicate", "malformed")) >= sent:
            done.set()
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    rec.stop()
    unique, gaps, _ = check_loss(db, session, sent)
    return {"scenario": "backlog drain", "units": n_units, "messages": sent, "offered_msg_s": float("nan"),
            "recorded_msg_s": unique / elapsed, "lost": sent - unique, "gaps": gaps, "malformed": rec.counts["malformed"]}


def main() -> int:
    n_units = 24
    auth = RoomAuth.generate(ROOM, [f"u{i:03d}" for i in range(n_units)])
    with tempfile.TemporaryDirectory() as tmp:
        files = write_broker_files(Path(tmp) / "broker", auth)
        rows = []
        with MosquittoProcess(files):
            db = Path(tmp) / "hub.sqlite"
            per_unit = 34.2  # messages per unit per second of room time
            for target in (1000, 2000, 3000):
                speed = target / (n_units * per_unit)
                rows.append(run_live(files, auth, db, n_units, seconds=int(10 * speed) or 10, speed=speed,
                                     label=f"{target}/s"))
            rows.append(run_backlog(files, auth, db, n_units, seconds=30))
    hdr = f"{'scenario':<16}{'units':>6}{'messages':>10}{'offered msg/s':>15}{'recorded msg/s':>16}{'lost':>6}{'gaps':>6}"
    print("\nhub recorder benchmark (real Mosquitto 127.0.0.1, QoS 1, ack after commit, SQLite WAL)")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        offered = "-" if np.isnan(r["offered_msg_s"]) else f"{r['offered_msg_s']:.0f}"
        print(f"{r['scenario']:<16}{r['units']:>6}{r['messages']:>10}{offered:>15}{r['recorded_msg_s']:>16.0f}"
              f"{r['lost']:>6}{r['gaps']:>6}")
    ok = all(r["lost"] == 0 and r["gaps"] == 0 for r in rows)
    # Sustained rate: what the recorder stored per second while 3000 msg/s were offered (live, first publish
    # to last message stored, so any lag counts against it), and how fast it drains a backlog.
    sustained = min(r["recorded_msg_s"] for r in rows if r["scenario"] in ("live 3000/s", "backlog drain"))
    print(f"\nzero loss: {'yes' if ok else 'NO'}; recorder sustained >= 2000 msg/s: "
          f"{'yes' if sustained >= 2000 else 'NO'} (lower of live 3000/s and backlog drain: {sustained:.0f} msg/s)")
    return 0 if ok and sustained >= 2000 else 1


if __name__ == "__main__":
    sys.exit(main())

"""``dyadsync demo``: a simulated therapy room, end to end, on one machine.

It starts a room broker (Mosquitto as a child process when installed, else an embedded broker), the hub
recorder writing to SQLite, and one unit: the unit daemon itself (``dyadsync unit run``, the code a
Raspberry Pi runs) with a simulated dyad (therapist and client EDA and PPG, known coupling) plugged in
at its hardware seams, a simulated status LED and a clock running faster than real time. The room
console starts a session with the given participant codes, the unit computes 4 Hz features and windowed
synchrony and publishes raw blocks, features and metrics at QoS 1 from its durable outbox, and the console
stops the session. A summary then compares what the unit sent (the rows of its outbox the broker
acknowledged) with what the hub stored, and names the command that shows the session's report.
Exit status 0 only if the hub stored every message the unit sent.

Several runs with the same --data-dir add sessions to one hub database (a simulated study: give each
dyad its own --therapist/--client codes and --seed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import shlex
import signal as _signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from broker import store, wire
from broker.auth import RoomAuth
from broker.console import RoomConsole
from core.errors import DyadsyncError
from device.clock import ScaledClock
from device.outbox import Outbox

from .room import RoomError, RoomProcesses, RoomTimeout, led_tree, read_led, sensors_toml, unit_toml
from .scenarios.scoring import FEATURE_BLOCK_NS, TAIL_BLOCKS
from .wiring import SPEC_FILE, HilSpec, t0_file, waiting_file

logger = logging.getLogger(__name__)

ROOM = "demo-room"
UNIT = "unit1"
PRE_S = 30.0  # simulated seconds of the dyad before the session starts (filters settle)
TAIL_S = 40.0  # simulated seconds after the session end
LEAD_REAL_S = 1.5  # real seconds from fixing the time line (the unit process is up) to the planned start
LATE_REAL_S = 10.0  # real seconds a unit may be later than that (the session then starts late)
DATA_KINDS = ("raw", "feat", "metric")
# The demo counts what the unit sent from its outbox's resend tail (data messages the broker acknowledged):
# the unit keeps that tail this many real seconds (the config's maximum), so a demo may last at most ~this long.
SIM_MARKER_TOLERANCE_S = 366 * 86400.0  # markers on the demo's simulated clock: not judged by the hub
KEEP_ACKED_S = 3600.0
FEATURE_WAIT_REAL_S = 30.0  # real seconds the demo waits for a late unit's features before its stop
MAX_REAL_S = 3000.0
WIRING_MAX_SPEED = {"sim": 10_000.0, "i2c": 3.0, "serial": 5.0}  # beyond: the emulated hardware falls behind


class DemoError(RoomError):
    """The demo could not run (its message says why and where the logs are)."""


def unit_data_dir(data_dir: Path, session: str) -> Path:
    """The unit's data directory of one demo session (its outbox is ``unit-unit1.sqlite`` there)."""
    return Path(data_dir) / "units" / session


def demo_schedule(duration_s: float) -> list:
    """Uncoupled, therapist-led, client-led, anti-phase and uncoupled again, in equal parts."""
    from hil.physiology import Segment

    edges = np.linspace(0, duration_s, 6)
    modes = [("uncoupled", 0.0), ("therapist_led", 3.0), ("client_led", 2.0), ("anti_phase", 0.0), ("uncoupled", 0.0)]
    return [Segment(float(a), float(b), mode=m, lag_s=lag, gain=0.8, channel="both")
            for (a, b), (m, lag) in zip(zip(edges[:-1], edges[1:], strict=True), modes, strict=True)]


@dataclass
class Sent:
    """What the unit's outbox holds of one session: data messages acknowledged by the broker, and queued."""

    acked: Counter
    queued: Counter


def outbox_counts(db_path: Path, session: str) -> Sent:
    """Count the session's raw, feature and metric messages in a unit's outbox (after the unit stopped):
    the resend tail holds every data message the broker acknowledged (``keep_acked_s`` long)."""
    ob = Outbox(db_path, keep_acked_s=KEEP_ACKED_S)
    try:
        acked, queued = Counter(), Counter()
        for rows, into in ((ob.acked_tail(), acked), (_all_pending(ob), queued)):
            for q in rows:
                if q.kind in DATA_KINDS and _session_of(q.kind, q.payload) == session:
                    into[q.kind] += 1
        return Sent(acked, queued)
    finally:
        ob.close()


def _all_pending(ob: Outbox) -> list:
    out, after = [], 0
    while True:
        rows = ob.pending(after, 1000)
        if not rows:
            return out
        out += rows
        after = rows[-1].id


def _session_of(kind: str, payload: bytes) -> str | None:
    try:
        return wire.Metric.decode(payload).session if kind == "metric" else wire.decode_block(payload)[1]
    except wire.WireError:
        return None


def run_demo(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir or f"demo-data/{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    session_s = round(args.minutes * 60)
    session = f"demo-{uuid.uuid4().hex[:8]}"
    codes = {"therapist": args.therapist, "client": args.client}
    auth = RoomAuth.generate(ROOM, [UNIT])
    print(f"dyadsync demo: room {ROOM}, session {session} (therapist {codes['therapist']}, client "
          f"{codes['client']}), {args.minutes:g} simulated minutes at {args.speed:g}x, seed {args.seed}")

    procs = RoomProcesses(data_dir, ROOM, verbose=args.verbose > 0)
    db_path = data_dir / "hub.sqlite"
    # The unit's data directory (outbox, simulator spec) is the session's own: a data directory reused for
    # several sessions (a simulated study) does not make each new unit resend the previous units' outboxes.
    unit_dir = unit_data_dir(data_dir, session)
    unit_dir.mkdir(parents=True)
    spec_path = unit_dir / SPEC_FILE
    # The simulated dyad: PRE_S before the session, the schedule from the planned start, and long enough for a
    # unit that is LATE_REAL_S late. Its time line (t0) is fixed once the unit process is up (below).
    schedule = demo_schedule(session_s)
    sim = {"seed": args.seed, "duration_s": PRE_S + session_s + TAIL_S + LATE_REAL_S * args.speed,
           "schedule": [{"start_s": PRE_S + g.start_s, "end_s": PRE_S + g.end_s, "mode": g.mode,
                         "lag_s": g.lag_s, "gain": g.gain, "channel": g.channel} for g in schedule]}
    HilSpec(sim=sim, t0_ns=None, block_s=1.0).write(spec_path)
    epoch_ns = time.time_ns()  # the shared anchor of simulated time (the unit's hardware.sim_epoch_ns)
    clock = ScaledClock(args.speed, epoch_ns)
    console: RoomConsole | None = None
    try:
        broker = procs.start_broker(auth, prefer=args.broker)
        print(f"  broker: {broker.kind} on {broker.host}:{broker.port} (anonymous clients refused)")
        led_dir = led_tree(data_dir / "leds")
        cfg_path = unit_dir / f"{UNIT}.toml"
        cfg_path.write_text(unit_toml(
            room=ROOM, unit=UNIT, data_dir=unit_dir, host=broker.host, port=broker.port,
            password=auth.units[UNIT], led_root=data_dir / "leds", speed=args.speed, epoch_ns=epoch_ns,
            sensors=sensors_toml(UNIT, ("therapist", "client"), args.wiring),
            outbox={"keep_acked_s": KEEP_ACKED_S}))
        procs.start_unit(UNIT, cfg_path)
        # the demo's markers carry simulated time, which runs ahead of the hub's clock by (speed - 1) x the wall
        # time since the simulated clock started — start-up included, which on a busy machine is long enough to
        # put a marker hours ahead: with a simulated clock the hub does not judge marker times (a year's slack)
        procs.start_recorder(db_path, auth, marker_tolerance_s=None if args.speed == 1 else SIM_MARKER_TOLERANCE_S)
        print(f"  hub recorder: {db_path}")
        procs.wait_for(waiting_file(spec_path).exists, 120,
                       f"unit {UNIT} to start (its log: {data_dir / f'unit-{UNIT}.log'})")

        # The unit process is up and its simulator built: fix the time line. The session is planned LEAD_REAL_S
        # from now, on a whole second; the simulated dyad starts PRE_S before it. A unit slower than that to be
        # ready starts the session late (up to LATE_REAL_S); the by-segment table places the segments on the
        # simulated time line.
        plan_ns = -(-(clock.now_ns() + round(LEAD_REAL_S * args.speed * 1e9)) // 1_000_000_000) * 1_000_000_000
        tmp = spec_path.with_name("t0.tmp")
        tmp.write_text(f"{plan_ns - round(PRE_S * 1e9)}\n")
        tmp.replace(t0_file(spec_path))
        logger.info("demo: session planned at %d ns (simulated)", plan_ns)

        console = RoomConsole(broker.host, broker.port, ROOM, *auth.service_user("console"))
        ready_s = (plan_ns - clock.now_ns()) / 1e9 / args.speed + LATE_REAL_S
        try:
            procs.wait_for(lambda: console.status.get(UNIT) is not None and console.status[UNIT].state == "idle",
                           max(ready_s, 0.5), f"unit {UNIT} to be ready")
        except RoomTimeout:
            st = console.status.get(UNIT)
            raise DemoError(f"unit {UNIT} was not ready (status {st.state if st else 'none'}) "
                            f"{LEAD_REAL_S + LATE_REAL_S:g} s after it started: the machine is busy; try a lower "
                            f"--speed (its log: {data_dir / f'unit-{UNIT}.log'})") from None
        if args.live:
            return _live(args, procs, console, broker, auth, data_dir, db_path, clock, plan_ns + session_s * 10**9)
        start_ns = max(plan_ns, -(-clock.now_ns() // 1_000_000_000) * 1_000_000_000)  # ready late: next second
        if start_ns > plan_ns:
            print(f"  the unit was ready {(start_ns - plan_ns) / 1e9:g} simulated s late: the session starts "
                  "that much later in the simulated schedule")
        _sleep_until(procs, clock, start_ns, args.speed)
        cid = console.send("start", session, time_ns=start_ns, cid=f"start-{session}", participants=codes)
        _wait_ack(procs, console, cid)

        stop_ns = start_ns + session_s * 1_000_000_000
        # the simulator's truth segments become session markers ("truth: ..."), drawn on the report's plots
        truth = [(plan_ns + round(g.start_s * 1e9), f"truth: {g.mode.replace('_', '-')}"
                  + (f", lag {g.lag_s:g} s" if g.lag_s else "")) for g in schedule]
        with tqdm(total=session_s, desc="simulated session", unit="s", disable=args.quiet,
                  bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]") as bar:
            while clock.now_ns() < stop_ns:
                procs.sleep(min(0.1, (stop_ns - clock.now_ns()) / 1e9 / args.speed + 0.001))
                while truth and clock.now_ns() >= truth[0][0]:
                    t_ns, label = truth.pop(0)
                    console.send("marker", session, time_ns=max(t_ns, start_ns), cid=f"truth-{session}-{len(schedule) - len(truth)}",
                                 label=label)
                bar.n = min(session_s, (clock.now_ns() - start_ns) / 1e9)
                st = console.status.get(UNIT)
                bar.set_postfix_str(f"unit {st.state if st else '?'}, LED {read_led(led_dir) or '?'}", refresh=False)
                bar.refresh()
        waited = time.monotonic()
        reached = _features_reach(procs, db_path, session, stop_ns, FEATURE_WAIT_REAL_S)
        waited = time.monotonic() - waited
        if not reached:
            print(f"  the unit's features had not reached the planned end after {FEATURE_WAIT_REAL_S:g} s: "
                  "stopping anyway (the session's last seconds lack features); use a lower --speed")
        elif waited > 1.0:
            print(f"  the unit ran behind the simulated clock (this machine does not keep up with --speed "
                  f"{args.speed:g}): the demo waited {waited:.1f} s for its features to reach the planned end, so the "
                  f"session runs about {waited * args.speed:.0f} simulated s longer than planned")
        cid = console.send("stop", session, time_ns=clock.now_ns(), cid=f"stop-{session}")
        _wait_ack(procs, console, cid)
        rc = procs.terminate(f"unit-{UNIT}", 60.0)  # SIGTERM: the unit flushes its outbox, publishes offline
        if rc != 0:
            raise DemoError(procs.children[f"unit-{UNIT}"].failure())
        sent = outbox_counts(unit_dir / f"unit-{UNIT}.sqlite", session)
        expected = {k: sent.acked[k] for k in DATA_KINDS}

        def stored_all() -> bool:
            con = store.connect(db_path, readonly=True)
            try:
                return store.stored_counts(con, UNIT, session) == expected
            finally:
                con.close()

        try:
            procs.wait_for(stored_all, 60, "the hub to store what the unit sent")
        except RoomTimeout:
            pass  # the table shows what is missing
        procs.terminate("recorder", 30.0)
        con = store.connect(db_path, readonly=True)
        try:
            stored = store.stored_counts(con, UNIT, session)
            summary = _summary(con, session)
            segments = _by_segment(con, session, plan_ns, schedule, 30.0)
            n_gaps = len(store.gaps(con, session))
            malformed = store.counters(con).get("malformed", 0)
        finally:
            con.close()
    except DyadsyncError as exc:  # a process that failed (RoomError), a broker that refused (BrokerError), ...
        raise DemoError(f"{exc}\nthe demo's files and logs are in {data_dir}") from None
    finally:
        if console is not None:
            console.close()
        procs.close()

    queued = sum(sent.queued.values())
    ok = queued == 0 and stored == expected and n_gaps == 0 and malformed == 0
    _print_table(expected, stored, summary, n_gaps, malformed, queued)
    _print_segments(segments)
    print(f"\nData: hub database {db_path}\n      unit {UNIT}: outbox {unit_dir / f'unit-{UNIT}.sqlite'}, "
          f"config {unit_dir / f'{UNIT}.toml'}, log {data_dir / f'unit-{UNIT}.log'}\n"
          f"      broker files {data_dir / 'broker'}")
    print("Result: " + ("OK, the hub stored every message the unit sent." if ok else "FAILED: the hub is missing messages."))
    print(f"\nNext: the session's report (HTML):\n  dyadsync report {session} --db {shlex.quote(str(db_path))} "
          f"--out {shlex.quote(str(data_dir / f'report-{session}.html'))}")
    return 0 if ok else 1


def _live(args: argparse.Namespace, procs: RoomProcesses, console: RoomConsole, broker, auth: RoomAuth,
          data_dir: Path, db_path: Path, clock: ScaledClock, end_ns: int) -> int:
    """``demo --live``: the simulated room keeps running with the room console page, and the operator starts,
    marks and stops sessions there (or with ``dyadsync session``), until Ctrl-C or the simulated dyad ends."""
    import secrets

    from broker.console_app import ConsoleServer, Login, write_login

    password = secrets.token_urlsafe(12)
    login_path = data_dir / "console" / "login.json"
    write_login(login_path, "operator", password)
    server = ConsoleServer(ROOM, [UNIT], (broker.host, broker.port, *auth.service_user("console")),
                           Login.load(login_path), db_path=db_path, host=args.host, port=args.port).start()
    print(f"\n  room console: {server.url}   user: operator   password: {password}")
    print(f"  the simulated room runs for {(end_ns - clock.now_ns()) / 6e10:.0f} simulated minutes at "
          f"{args.speed:g}x; start, mark and stop sessions on the page. Ctrl-C ends the demo.", flush=True)
    _signal.signal(_signal.SIGTERM, _signal.default_int_handler)  # SIGTERM ends the live demo as Ctrl-C does
    try:
        while clock.now_ns() < end_ns:
            procs.sleep(0.2)
    except KeyboardInterrupt:
        print("\n  stopping the demo")
    finally:
        server.stop()
    st = console.status.get(UNIT)
    if st is not None and st.session:  # a session left running: stop it so its records are complete
        cid = console.send("stop", st.session, time_ns=clock.now_ns(), cid=f"stop-{st.session}-end")
        _wait_ack(procs, console, cid)
    procs.terminate(f"unit-{UNIT}", 60.0)
    procs.terminate("recorder", 30.0)
    con = store.connect(db_path, readonly=True)
    try:
        sessions = [s["session"] for s in store.list_sessions(con, limit=1000)]
    finally:
        con.close()
    print(f"\nData: hub database {db_path}; sessions recorded: {', '.join(sessions) or 'none'}")
    for session in sessions:
        print(f"  dyadsync report {session} --db {shlex.quote(str(db_path))} "
              f"--out {shlex.quote(str(data_dir / f'report-{session}.html'))}")
    return 0


def _features_reach(procs: RoomProcesses, db_path: Path, session: str, end_ns: int, timeout_s: float) -> bool:
    """Wait (at most ``timeout_s`` real seconds) until the hub holds every feature stream of ``session`` up to
    ``end_ns``, less what the unit computes late by design (``TAIL_BLOCKS``: HR waits for later beats). The unit
    ends its session when the stop arrives, so a unit that fell behind (a loaded machine at a high ``--speed``)
    would otherwise lose the session's last seconds. Reads the hub's database (the recorder's WAL), a few times
    a second: no subscription that would load the broker. False on timeout."""
    need = {f"{role}/{ch}": end_ns - (n + 1) * FEATURE_BLOCK_NS for role in ("therapist", "client")
            for ch, n in TAIL_BLOCKS.items()}
    last = [0.0]

    def reached() -> bool:
        if time.monotonic() - last[0] < 0.25:
            return False
        last[0] = time.monotonic()
        con = store.connect(db_path, readonly=True)
        try:
            ends = {s.stream: s.t_end_ns for s in store.session_streams(con, session) if s.kind == "feat"}
        finally:
            con.close()
        return all(ends.get(k, -1) >= v for k, v in need.items())

    try:
        procs.wait_for(reached, timeout_s, "the unit's features to reach the planned end")
    except RoomTimeout:
        return False
    return True


def _sleep_until(procs: RoomProcesses, clock: ScaledClock, ns: int, speed: float) -> None:
    while (left := (ns - clock.now_ns()) / 1e9 / speed) > 0:
        procs.sleep(min(left, 0.2))


def _wait_ack(procs: RoomProcesses, console: RoomConsole, cid: str) -> None:
    try:
        procs.wait_for(lambda: bool(console.acks_for(cid)), 30, f"unit {UNIT} to acknowledge {cid}")
    except RoomTimeout:
        raise DemoError(f"unit {UNIT} did not acknowledge {cid} within 30 s") from None
    ack = console.acks_for(cid)[0]
    if not ack.ok:
        raise DemoError(f"unit {UNIT} refused {cid}: {ack.error}")


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
    """Mean therapist-led and client-led z of the windows that lie wholly inside each simulated segment
    (``t_start_ns``: where the schedule's time 0 is on the simulated time line)."""
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


def _print_table(expected, stored, summary, n_gaps, malformed, queued) -> None:
    print("\n  messages      sent (acked)   stored at hub")
    for kind in DATA_KINDS:
        mark = "" if expected[kind] == stored[kind] else "   <-- MISMATCH"
        print(f"  {kind:<12}{expected[kind]:>14}{stored[kind]:>16}{mark}")
    print(f"  {'total':<12}{sum(expected.values()):>14}{sum(stored.values()):>16}")
    print(f"  sent: the session's messages in the unit's outbox that the broker acknowledged; "
          f"still queued: {queued}")
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
    p.add_argument("--speed", type=float, default=None,
                   help="simulated seconds per wall-clock second (default 60; 1 with --live)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated dyad (default 1)")
    p.add_argument("--therapist", default="T01", help="the therapist's pseudonymous code (default T01)")
    p.add_argument("--client", default="C01", help="the client's pseudonymous code (default C01)")
    p.add_argument("--data-dir", help="where the hub database, the unit's files, broker files and logs go "
                                      "(default demo-data/<time>; reuse one to collect several sessions)")
    p.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                   help="auto: Mosquitto if installed, else the embedded broker (default auto)")
    p.add_argument("--wiring", choices=tuple(WIRING_MAX_SPEED), default="sim",
                   help="how the simulated sensors reach the unit: sim (simulated sensors, any speed), i2c "
                        "(register-level ADS1115/MAX30102 behind a TCA9548A on an emulated bus, up to 3x) or "
                        "serial (an emulated firmware on a pseudo-terminal, up to 5x) (default sim)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--live", action="store_true",
                   help="keep the simulated room running with the room console page (--minutes is then how long "
                        "the simulated dyad lasts; use --speed 1 to operate it in real time); no automatic session")
    p.add_argument("--host", default="127.0.0.1", help="--live: address the console page listens on "
                                                       "(0.0.0.0 to open it from a tablet on the room network)")
    p.add_argument("--port", type=int, default=0, help="--live: console page port (default: a free one)")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    def bad(msg: str) -> int:
        print(f"dyadsync demo: {msg}", file=sys.stderr)
        return 2

    if args.speed is None:
        args.speed = 1.0 if args.live else 60.0
    if args.live and args.speed != 1.0:
        return bad("--live runs in real time (--speed 1): the console stamps commands with the hub's clock")
    if not (args.minutes > 0 and args.speed > 0):
        return bad("--minutes and --speed must be positive")
    if args.speed > WIRING_MAX_SPEED["sim"]:
        return bad(f"--speed can be at most {WIRING_MAX_SPEED['sim']:g}")
    if args.speed > WIRING_MAX_SPEED[args.wiring]:
        return bad(f"--wiring {args.wiring} keeps up with at most {WIRING_MAX_SPEED[args.wiring]:g}x real time "
                   f"(the emulated hardware is polled in real time); use a lower --speed or --wiring sim")
    if not args.live and args.minutes * 60 / args.speed > MAX_REAL_S:
        return bad(f"a demo may last at most {MAX_REAL_S / 60:g} real minutes (it compares the hub with the unit's "
                   f"outbox, which keeps sent messages for {KEEP_ACKED_S / 60:g} minutes): raise --speed")
    for role in ("therapist", "client"):
        if not wire.CODE_RE.match(getattr(args, role)):
            return bad(f"--{role} {getattr(args, role)!r}: a pseudonymous code is 1-32 letters, digits, '_' or '-' "
                       "starting with a letter or digit")
    return run_demo(args)

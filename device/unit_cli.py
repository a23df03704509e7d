"""``dyadsync unit run|status|check-config``."""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
from pathlib import Path

from .config import DEFAULT_PATH, load_config

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("unit", help="the headless unit daemon", description="The headless unit daemon.")
    sub = p.add_subparsers(dest="unit_command", metavar="ACTION", required=True)

    run = sub.add_parser("run", help="run the unit (as systemd does)")
    run.add_argument("--config", type=Path, default=DEFAULT_PATH, help=f"unit config (default {DEFAULT_PATH})")
    run.add_argument("--speed", type=float, default=None,
                     help="simulated-time factor, overrides hardware.speed (HIL scenarios)")
    run.add_argument("--sim-epoch-ns", type=int, default=None,
                     help="anchor of simulated time, overrides hardware.sim_epoch_ns (same value for all units)")
    run.add_argument("--data-dir", type=Path, default=None, help="override data_dir")
    run.set_defaults(func=cmd_run)

    st = sub.add_parser("status", help="show the local state: session, queued messages, drops, last status")
    st.add_argument("--config", type=Path, default=DEFAULT_PATH)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)

    ck = sub.add_parser("check", help="check the unit's outbox database: integrity, queued messages, drops",
                        description="Check the unit's outbox database without changing it (safe while the unit "
                        "runs): SQLite's integrity check, required values, what waits to be sent per stream, "
                        "any sequence number held twice, and what the disk quota dropped. Exit status 0: "
                        "intact; 1: damaged; 2: not a readable outbox.")
    ck.add_argument("--config", type=Path, default=None, help=f"unit config (default {DEFAULT_PATH})")
    ck.add_argument("--db", type=Path, default=None, help="the outbox SQLite file (overrides the config)")
    ck.add_argument("--json", action="store_true", help="machine-readable output")
    ck.set_defaults(func=cmd_check)

    cc = sub.add_parser("check-config", help="validate a unit config file and print a summary")
    cc.add_argument("file", type=Path, nargs="?", default=DEFAULT_PATH)
    cc.set_defaults(func=cmd_check_config)


def _with_overrides(cfg, speed: float | None, data_dir: Path | None, epoch_ns: int | None = None):
    hw_upd = {k: v for k, v in (("speed", speed), ("sim_epoch_ns", epoch_ns)) if v is not None}
    hw = cfg.hardware.model_copy(update=hw_upd)
    upd = {"hardware": hw}
    if data_dir is not None:
        upd["data_dir"] = data_dir
    return cfg.model_copy(update=upd)


def cmd_run(args: argparse.Namespace) -> int:
    from .unit import Unit

    cfg = _with_overrides(load_config(args.config), args.speed, args.data_dir, args.sim_epoch_ns)
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    unit = Unit(cfg)
    return unit.run()


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    db = cfg.db_path
    if not db.exists():
        print(f"no unit database at {db} (the unit has not run yet)", file=sys.stderr)
        return 1
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        state = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM state")}
        cols = {r[1] for r in con.execute("PRAGMA table_info(outbox)")}
        queued = "WHERE acked_ns IS NULL" if "acked_ns" in cols else ""  # older files have no resend tail
        depth, nbytes = con.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox {queued}").fetchone()
        tail = con.execute("SELECT COUNT(*) FROM outbox WHERE acked_ns IS NOT NULL").fetchone()[0] if queued else 0
        counters = dict(con.execute("SELECT name, value FROM counters"))
    finally:
        con.close()
    session = (state.get("session") or {}).get("session")
    info = {
        "room": cfg.room, "unit": cfg.unit, "database": str(db),
        "session": session, "queued_messages": depth, "queued_bytes": nbytes, "resend_tail_messages": tail,
        "quota_bytes": int(cfg.outbox.quota_mb * 2**20), "dropped": counters,
        "last_status": state.get("last_status"),
    }
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    _print_status(cfg, db, session, depth, nbytes, tail, info["quota_bytes"], counters, state.get("last_status"))
    return 0


def _when(ns: int | None, now_ns: int | None = None) -> str:
    """A UTC nanosecond time for people: local date and time, and how long ago."""
    import datetime as dt
    import time

    if not ns:
        return "-"
    t = dt.datetime.fromtimestamp(ns / 1e9).astimezone()
    ago = ((now_ns or time.time_ns()) - ns) / 1e9
    if ago < 0:
        rel = f"in {-ago:.0f} s"
    elif ago < 120:
        rel = f"{ago:.0f} s ago"
    elif ago < 7200:
        rel = f"{ago / 60:.0f} min ago"
    elif ago < 172800:
        rel = f"{ago / 3600:.1f} h ago"
    else:
        rel = f"{ago / 86400:.0f} days ago"
    return f"{t:%Y-%m-%d %H:%M:%S %Z} ({rel})"


COUNTER_HELP = {
    "bad_commands": "commands refused (malformed, unknown session, other codes)",
    "outbox_quota": "messages dropped: outbox over its quota",
}


def _counter_help(name: str) -> str:
    if name in COUNTER_HELP:
        return COUNTER_HELP[name]
    if name.startswith("lost_samples_"):
        return f"samples missing inside the open session ({name[13:].replace('_', '/', 1)})"
    if name.startswith("lost_"):
        return f"source blocks lost since the start ({name[5:].replace('_', '/', 1)})"
    if name.startswith("outbox_") or name.startswith("dropped_"):
        return "messages the outbox dropped"
    return ""


def _print_status(cfg, db, session, depth, nbytes, tail, quota, counters, last) -> None:
    print(f"unit {cfg.unit} in room {cfg.room}")
    print(f"  database:    {db}")
    print(f"  broker:      {cfg.broker.url} as {cfg.broker.username}")
    if session:
        codes = session.get("participants") or {}
        print(f"  session:     {session['id']} (open) since {_when(session.get('start_ns'))}; therapist "
              f"{codes.get('therapist', '?')}, client {codes.get('client', '?')}; {session.get('markers', 0)} markers")
    else:
        print("  session:     none")
    print(f"  outbox:      {depth} messages ({nbytes / 2**20:.2f} MiB) waiting for the broker; quota "
          f"{quota / 2**20:.0f} MiB; {tail} acknowledged kept to resend after a reconnect")
    if last and last.get("state") == "offline":
        print(f"  last status: offline (the unit stopped) at {_when(last.get('time_ns'))}; sensors and counters "
              "are shown while it runs")
        dropped = {}
    elif last:
        print(f"  last status: {last.get('state')} at {_when(last.get('time_ns'))}")
        synced = last.get("clock_synced")
        print("  clock:       " + {True: "synchronised (chrony)", False: "NOT synchronised: check chrony",
                                   None: "unknown (no check configured)"}.get(synced, str(synced)))
        sensors = last.get("sensors") or {}
        print("  sensors:" + ("     none reported" if not sensors else ""))
        for name, st in sorted(sensors.items()):
            print(f"    {name:<16} {st}")
        dropped = last.get("dropped") or {}
    else:
        print("  last status: none yet (the unit has not published a status)")
        dropped = {}
    merged = {**{k: v for k, v in counters.items()}, **dropped}
    print("  counters:" + ("    all zero" if not any(merged.values()) else ""))
    for name, value in sorted(merged.items()):
        print(f"    {name:<28} {value:>8}  {_counter_help(name)}")


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    print(f"{args.file}: OK")
    print(f"  room {cfg.room}, unit {cfg.unit}, broker {cfg.broker.url} as {cfg.broker.username}")
    for s in cfg.sensors:
        where = s.url if s.kind == "serial" else (f"i2c-{s.i2c_bus} 0x{s.address:02x}" if s.address else "-")
        print(f"  sensor {s.name}: {s.kind} {s.stream or '(roles from firmware)'} @ {s.rate_hz:g} Hz ({where})")
    print(f"  dsp: win {cfg.dsp.win_s:g} s, inc {cfg.dsp.inc_s:g} s, lag {cfg.dsp.lag_s:g} s, channels {cfg.dsp.channels}")
    print(f"  partner: {cfg.dyad.partner or 'none'}; leds: {cfg.leds.backend}; hardware: {cfg.hardware.mode}"
          f" (speed {cfg.hardware.speed:g})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import dataclasses

    from .outbox import check_outbox

    quota = None
    db = args.db
    if db is None or args.config is not None:
        cfg = load_config(args.config or DEFAULT_PATH)
        db = db or cfg.db_path
        quota = int(cfg.outbox.quota_mb * 2**20)
    report = check_outbox(db)
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "damaged": report.damaged, "queued": report.queued,
                          "dropped": report.dropped,
                          "bytes_queued": report.bytes_queued, "quota_bytes": quota}, indent=2, sort_keys=True))
    else:
        print("\n".join(describe_outbox_check(report, quota)))
    return 1 if report.damaged else 0


_KIND_WORDS = {"raw": ("raw block", "raw blocks"), "feat": ("feature block", "feature blocks"),
               "metric": ("metric window", "metric windows"), "status": ("status message", "status messages"),
               "ack": ("command answer", "command answers")}


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _n(n: int, kind: str) -> str:
    one, many = _KIND_WORDS.get(kind, (f"{kind} message", f"{kind} messages"))
    return f"{n} {one if n == 1 else many}"


def describe_outbox_check(r, quota_bytes: int | None = None) -> list[str]:
    """A :class:`device.outbox.OutboxCheck` in words a lab understands."""
    out = [f"Unit outbox {r.path} (SQLite {r.sqlite_version})"]
    if r.integrity == ["ok"] and not any(r.nulls.values()):
        out.append("Integrity: intact. SQLite's integrity check says 'ok' and no required value is missing.")
    else:
        out.append("Integrity: DAMAGED.")
        out += [f"  SQLite: {line}" for line in r.integrity[:10] if line != "ok"]
        out += [f"  {n} rows lack a value in {col}" for col, n in r.nulls.items() if n]
    if r.session:
        seqs = ", ".join(f"{k} {v}" for k, v in sorted(r.next_seq.items())) or "none yet"
        out.append(f"Open session: {r.session} (next raw sequence numbers: {seqs})")
    else:
        out.append("Open session: none")
    quota = f" of a {quota_bytes / 2**20:g} MiB quota" if quota_bytes else ""
    waiting = [a for a in r.accounts if a.queued]
    out.append(f"Waiting to be sent: {_count(r.queued, 'message')}, {r.bytes_queued} bytes{quota}"
               + (":" if waiting else " (everything was delivered to the broker)."))
    for a in waiting:
        seq = f" (seq {a.first_seq}-{a.last_seq})" if a.first_seq is not None else ""
        where = f"session {a.session} " if a.session else ""
        dup = f"; {a.duplicates} sequence numbers held twice" if a.duplicates else ""
        out.append(f"  {where}{a.name}: {_n(a.queued, a.kind)}{seq}{dup}")
    tail = sum(a.tail for a in r.accounts)
    if tail:
        out.append(f"Kept to resend after a reconnect (already acknowledged by the broker): {_count(tail, 'message')}.")
    quota_drops = {k: v for k, v in r.dropped.items() if "unwritten" not in k}
    full_disk = {k: v for k, v in r.dropped.items() if "unwritten" in k}
    if quota_drops:
        words = ", ".join(_n(v, k) for k, v in sorted(quota_drops.items()))
        out.append(f"Dropped under the disk quota since this file was created: {words} "
                   "(the hub shows them as missing sequence numbers).")
    else:
        out.append("Nothing was dropped under the disk quota.")
    if full_disk:
        words = ", ".join(_n(v, k) for k, v in sorted(full_disk.items()))
        out.append(f"Dropped because the disk was full and the unit's memory allowance ran out: {words} "
                   "(the hub shows them as missing sequence numbers).")
    if r.damaged:
        out.append("Result: DAMAGED - " + "; ".join(r.problems) + ".")
    else:
        out.append("Result: intact" + (f"; {_count(r.queued, 'message')} waiting for the broker." if r.queued else "."))
    return out

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
    print(f"unit {cfg.unit} in room {cfg.room}  ({db})")
    if session:
        print(f"  session:  {session['id']} (open; participants {session['participants']})")
    else:
        print("  session:  none")
    print(f"  outbox:   {depth} messages, {nbytes} bytes queued (quota {info['quota_bytes']} bytes); "
          f"{tail} acknowledged kept to resend after a reconnect")
    print(f"  dropped:  {counters or 'none'}")
    last = state.get("last_status")
    if last:
        print(f"  last status: {last.get('state')} at {last.get('time_ns')} (sensors {last.get('sensors')}, "
              f"clock synced {last.get('clock_synced')})")
    return 0


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

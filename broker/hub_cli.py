"""``dyadsync hub init|run|serve|console``: set up a room hub, record it, serve the pull API and the console."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import tomllib
from pathlib import Path
from urllib.parse import urlparse

from core.errors import ConfigError

logger = logging.getLogger(__name__)

_SCHEMA_VERSION = 2  # broker.store.SCHEMA_VERSION, not imported here to keep `dyadsync --help` light


def register(subparsers: argparse._SubParsersAction) -> None:
    hub = subparsers.add_parser("hub", help="room hub: Mosquitto config, recorder, pull API")
    sub = hub.add_subparsers(dest="hub_command", metavar="ACTION", required=True)

    p = sub.add_parser("init", help="write Mosquitto conf, passwords, ACL, TLS, bridge, unit credentials, chrony")
    p.add_argument("--config", "-c", required=True, type=Path, help="hub TOML config (see docs/hub.md)")
    p.add_argument("--rotate", action="store_true", help="renew every password, certificate and the API token")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="run the recorder (until SIGTERM/SIGINT)")
    p.add_argument("--config", "-c", type=Path, help="hub TOML config (takes db and credentials from init's output)")
    p.add_argument("--db", type=Path, help="SQLite file (overrides the config)")
    p.add_argument("--credentials", type=Path, help="a service credentials TOML with a [broker] table "
                   "(url, username, password[, ca_file])")
    p.add_argument("--room", help="room id, or '+' to record every room on a lab broker")
    p.add_argument("--marker-tolerance-s", type=float, default=None,
                   help="how far a marker's time may lie from the hub's clock before it is refused (default 10 s; "
                        "a simulated room running faster than real time needs its simulated span)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="serve the read-only pull API (HTTP, bearer token)")
    p.add_argument("--config", "-c", type=Path, help="hub TOML config")
    p.add_argument("--db", type=Path, help="SQLite file (overrides the config)")
    p.add_argument("--token-file", type=Path, help="bearer token file (overrides the config)")
    p.add_argument("--host", help="bind address (default from config, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default from config, else 8080)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="check a hub database: integrity, and every stream's gaps and duplicates",
                       description="Check a hub database without changing it: SQLite's integrity check, required "
                       "values, and for every session and stream how many blocks arrived, which are missing "
                       "and whether any is stored twice. Exit status 0: intact (missing data is described); "
                       "1: damaged (or, with --strict, data missing); 2: not a readable hub database.")
    p.add_argument("--config", "-c", type=Path, help="hub TOML config (its recorder database)")
    p.add_argument("--db", type=Path, help="SQLite file (overrides the config)")
    p.add_argument("--strict", action="store_true", help="exit 1 also when blocks or metrics are missing")
    p.add_argument("--migrate", action="store_true", help="first convert a file written before layout version "
                   f"{_SCHEMA_VERSION} (once; keeps every row; stop the recorder first)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)

    # the live room console page and its login (broker/session_cli.py, broker/console_app.py)
    from .session_cli import add_console_args, add_passwd_args

    add_console_args(sub.add_parser("console", help="serve the live room console page (login, traces, "
                                    "synchrony, start/stop/markers)"))
    add_passwd_args(sub.add_parser("console-passwd", help="set the room console's login"))


def cmd_init(args: argparse.Namespace) -> int:
    from .hub_config import load_hub_config
    from .hub_init import init_hub

    cfg = load_hub_config(args.config)
    layout = init_hub(cfg, rotate=args.rotate)
    print(f"hub files for room {cfg.room} written to {layout.out_dir}")
    print(f"  mosquitto:   mosquitto -c {layout.broker.conf}")
    for unit, path in layout.unit_files.items():
        print(f"  unit {unit}: copy {path.parent}/ to the unit")
    print(f"  chrony:      {layout.chrony_file} -> /etc/chrony/conf.d/")
    print(f"  API token:   {layout.token_file}")
    if layout.chowned:
        print(f"  owned by {cfg.mosquitto_user}: " + ", ".join(str(p) for p in layout.chowned))
    return 0


def read_credentials(path: Path) -> dict:
    """A credentials TOML written by init: ``[broker]`` url, username, password, optional ca_file."""
    try:
        data = tomllib.loads(path.read_text())
        broker = data["broker"]
        url = urlparse(broker["url"])
        out = {"room": data.get("room"), "username": broker["username"], "password": broker["password"],
               "host": url.hostname, "port": url.port or (8883 if url.scheme == "mqtts" else 1883),
               "tls_ca": None}
    except OSError as exc:
        raise ConfigError(f"cannot read credentials {path}: {exc}") from exc
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: credentials need a [broker] table with url, username, password ({exc})") from None
    if url.scheme == "mqtts":
        ca = broker.get("ca_file")
        out["tls_ca"] = str(path.parent / ca) if ca else None
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from .recorder import Recorder

    db, creds_path, room, batch = args.db, args.credentials, args.room, {}
    if args.config:
        from .hub_config import load_hub_config

        cfg = load_hub_config(args.config)
        db = db or cfg.path(cfg.recorder.db)
        creds_path = creds_path or cfg.out_dir / "services" / "recorder.toml"
        room = room or cfg.room
        batch = {"batch_size": cfg.recorder.batch_size, "batch_interval_s": cfg.recorder.batch_interval_s}
    if db is None or creds_path is None:
        raise ConfigError("hub run needs --config, or --db and --credentials")
    creds = read_credentials(creds_path)
    room = room or creds["room"]
    if not room:
        raise ConfigError("hub run: no room given (--room, the config, or 'room' in the credentials file)")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rec = _start_recorder(lambda: Recorder(db, room, creds["host"], creds["port"], creds["username"],
                                           creds["password"], tls_ca=creds["tls_ca"], **batch,
                                           **({} if args.marker_tolerance_s is None else
                                              {"marker_tolerance_s": args.marker_tolerance_s})), stop,
                          f"{creds['host']}:{creds['port']}")
    if rec is None:
        print("recorder stopped before it could connect to its broker")
        return 0
    print(f"recording room {room} from {creds['host']}:{creds['port']} into {db} (Ctrl-C to stop)")
    try:
        while not stop.wait(30):
            logger.info("recorder counts: %s", dict(rec.counts))
    finally:
        rec.stop()
        print(f"recorder stopped; counts: {dict(rec.counts)}")
    return 0


RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0


def _start_recorder(make, stop: threading.Event, where: str):
    """Start a recorder, waiting for its broker: a hub that boots before Mosquitto (or while it restarts)
    retries with backoff (1 s doubling to 30 s) and says why at the default log level, until ``stop``."""
    from .errors import BrokerError

    delay, attempt = RETRY_MIN_S, 0
    while not stop.is_set():
        attempt += 1
        rec = make()
        try:
            rec.start()
            if attempt > 1:
                logger.warning("recorder connected to %s after %d attempts", where, attempt)
            return rec
        except BrokerError as exc:
            refused = rec.counts.get("connect_refused", 0) or rec.counts.get("subscribe_refused", 0)
            why = ("the broker refused the recorder's account (check services/recorder.toml against the "
                   "broker's password file and ACL: rerun `dyadsync hub init`)" if refused else str(exc))
            logger.warning("recorder: %s; retrying in %.0f s", why, delay)
            print(f"waiting for the broker at {where}: {why}; retrying in {delay:.0f} s", flush=True)
        stop.wait(delay)
        delay = min(RETRY_MAX_S, delay * 2)
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .api import create_app, read_token

    db, token_file, host, port = args.db, args.token_file, args.host, args.port
    if args.config:
        from .hub_config import load_hub_config

        cfg = load_hub_config(args.config)
        db = db or cfg.path(cfg.recorder.db)
        token_file = token_file or cfg.path(cfg.api.token_file)
        host = host or cfg.api.host
        port = port or cfg.api.port
    if db is None or token_file is None:
        raise ConfigError("hub serve needs --config, or --db and --token-file")
    app = create_app(db, read_token(token_file))
    uvicorn.run(app, host=host or "127.0.0.1", port=port or 8080, log_level="info")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from . import store

    db = args.db
    if db is None and args.config:
        from .hub_config import load_hub_config

        cfg = load_hub_config(args.config)
        db = cfg.path(cfg.recorder.db)
    if db is None:
        raise ConfigError("hub check needs --db FILE or --config hub.toml")
    if args.migrate:
        if not Path(db).is_file():
            raise store.StoreError(f"{db}: no such file")
        con = store.connect(db)
        con.close()
    report = store.check_database(db)
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "damaged": report.damaged, "incomplete": report.incomplete,
                          "false_null_reports": report.false_null_reports}, indent=2, sort_keys=True))
    else:
        print("\n".join(describe_check(report)))
    return 1 if report.damaged or (args.strict and report.incomplete) else 0


def _utc(ns: int | None) -> str:
    import datetime as dt

    if ns is None:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _ranges(ranges: list[tuple[int, int]], total: int) -> str:
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges]
    more = total - sum(b - a + 1 for a, b in ranges)
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


_UNIT_WORDS = (
    ("outbox_", "{n} {what} messages dropped from its outbox (disk quota)"),
    ("lost_samples_", "{n} samples of {what} lost between sensor and unit"),
    ("lost_", "{n} blocks of {what} lost between sensor and unit"),
)


def _unit_report(name: str, n: int) -> str:
    for prefix, words in _UNIT_WORDS:
        if name.startswith(prefix):
            return words.format(n=n, what=name.removeprefix(prefix).replace("_", "/", 1))
    if name == "bad_commands":
        return f"{_plural(n, 'malformed command')} refused"
    return f"{name}: {n}"


def describe_check(r) -> list[str]:
    """A :class:`broker.store.HubCheck` in words a lab understands."""
    out = [f"Hub database {r.path} (SQLite {r.sqlite_version}, layout version {r.layout_version})"]
    if r.integrity_ok and not any(r.nulls.values()):
        out.append("Integrity: intact. SQLite's integrity check says 'ok' and no required value is missing.")
    elif r.false_null_reports:
        out.append(f"Integrity: intact, but SQLite {r.sqlite_version} wrongly reports missing values "
                   f"({len(r.integrity)} 'NULL value' lines) in {', '.join(r.old_layout)}: a direct count finds "
                   "none. This is a known SQLite 3.40 misreport for the table layout used before version 2. "
                   f"Convert the file once (keeps every row; stop the recorder first): "
                   f"dyadsync hub check --db {r.path} --migrate")
    else:
        out.append("Integrity: DAMAGED. Keep a copy of the file as it is; `sqlite3 FILE .recover` can often "
                   "rescue the rows that are still readable into a new file.")
        lines = [x for entry in r.integrity if entry != "ok" for x in entry.splitlines()]
        out += [f"  SQLite: {line}" for line in lines[:12]]
        if len(lines) > 12:
            out.append(f"  SQLite: ... and {len(lines) - 12} more lines")
        out += [f"  {n} rows lack a value in {col}" for col, n in r.nulls.items() if n]
    if r.unreadable:
        out.append(f"Reading stopped part way ({r.unreadable}): the accounting below is incomplete.")
    out.append(f"Sessions: {len(r.sessions)}")
    by_session: dict[str, list] = {}
    for s in r.streams:
        by_session.setdefault(s.session, []).append(s)
    known = {s["session"] for s in r.sessions}
    for meta in r.sessions + [{"session": k} for k in by_session if k not in known]:
        sid = meta["session"]
        who = (f"therapist {meta.get('therapist_code')}, client {meta.get('client_code')}"
               if meta.get("therapist_code") else "no start command recorded")
        out.append(f"  Session {sid} (room {meta.get('room') or '-'}): {who}; started {_utc(meta.get('started_ns'))}, "
                   f"stopped {_utc(meta.get('stopped_ns'))}")
        streams = by_session.get(sid, [])
        if not streams:
            out.append("    stored data could not be read" if r.unreadable else "    no data stored")
        for s in streams:
            if s.kind == "metric":
                what = f"{_plural(s.count, 'window')} (seq {s.first_seq}-{s.last_seq})"
            else:
                secs = (s.t_end_ns - s.t_start_ns) / 1e9
                what = (f"{_plural(s.count, 'block')} (seq {s.first_seq}-{s.last_seq}), {s.samples} samples at "
                        f"{s.rate_hz:g} Hz over {secs:.1f} s")
            notes = []
            unit_word = "window" if s.kind == "metric" else "block"
            if s.missing:
                notes.append(f"{_plural(s.missing, unit_word)} missing (seq {_ranges(s.gap_ranges, s.missing)})")
            if s.duplicates:
                notes.append(f"{s.duplicates} stored twice")
            if s.overlaps:
                notes.append(f"{_plural(s.overlaps, unit_word)} overlapping the previous one in time")
            kind = {"raw": "raw", "feat": "feature", "metric": "metric"}[s.kind]
            out.append(f"    {s.unit} {kind} {s.stream}: {what}; " + ("; ".join(notes) if notes else "complete"))
    c = r.counters
    if r.unreadable:
        pass
    elif c:
        rows = r.table_rows
        agree = all(c.get(f"stored_{k}") in (None, rows[k]) for k in rows)
        out.append(f"Recorder: stored {rows['raw']} raw blocks, {rows['feat']} feature blocks and {rows['metric']} "
                   f"metrics" + (", as it counted" if agree else " - NOT what it counted (see below)") + "; "
                   f"{_plural(c.get('duplicate', 0), 'redelivered copy')} recognised and not stored twice; "
                   f"{_plural(c.get('malformed', 0), 'malformed message')} and "
                   f"{_plural(c.get('unauthorized', 0), 'unauthorized message')} refused "
                   f"({r.rejects} kept in the rejects table).".replace("copys", "copies"))
    else:
        out.append("Recorder: no counters (this database was not written by the recorder).")
    for unit, dropped in r.unit_reports.items():
        words = ", ".join(_unit_report(k, v) for k, v in sorted(dropped.items())) or "nothing dropped or lost"
        room, _, name = unit.partition("/")
        out.append(f"Unit {name} (room {room}) reported in its last status: {words}.")
    missing = sum(s.missing for s in r.streams)
    gappy = sum(1 for s in r.streams if s.missing)
    if r.damaged:
        out.append("Result: DAMAGED - " + "; ".join(r.problems) + ".")
    elif missing:
        out.append(f"Result: intact; {missing} blocks or metric windows missing in {_plural(gappy, 'stream')} "
                   "(lost before they reached the hub; listed above).")
    else:
        out.append("Result: intact and complete: every stream is gap-free and nothing is stored twice.")
    return out

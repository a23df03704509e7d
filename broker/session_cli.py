"""``dyadsync session start|stop|mark|list``, and ``dyadsync hub console|console-passwd`` (the live page).

Both use the console account that ``dyadsync hub init`` writes (``services/console.toml`` under the hub's
``out_dir``) and the hub config for the room's units and database; ``--credentials`` with ``--units``
works without the hub config (e.g. from a laptop that has a copy of the console credentials).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(os.environ.get("DYADSYNC_HUB_CONFIG", "/etc/dyadsync/hub.toml"))


@dataclass
class Access:
    room: str
    creds: dict
    units: list[str]
    db: Path | None
    out_dir: Path | None


def _add_access(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, default=None,
                   help=f"hub TOML config (default {DEFAULT_CONFIG}, or $DYADSYNC_HUB_CONFIG)")
    p.add_argument("--credentials", type=Path, help="console credentials TOML (instead of the hub config)")
    p.add_argument("--units", help="comma-separated unit ids that must answer (default: the config's units)")
    p.add_argument("--db", type=Path, help="hub database (default: the config's)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for every unit's answer (20)")


def register(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("session", help="start, stop and mark sessions; list sessions",
                              description="Operate the room's sessions with the console account.")
    sub = s.add_subparsers(dest="session_command", metavar="ACTION", required=True)
    p = sub.add_parser("start", help="start a session with pseudonymous participant codes")
    p.add_argument("--therapist", "-t", required=True, help="therapist code, e.g. T01 (never a name)")
    p.add_argument("--client", "-k", required=True, help="client code, e.g. C07 (never a name)")
    p.add_argument("--session", "-s", help="session id (default <room>-<UTC date-time>)")
    _add_access(p)
    p.set_defaults(func=cmd_start)
    p = sub.add_parser("stop", help="stop the running session")
    p.add_argument("--session", "-s", help="session id (default: the one the units record)")
    _add_access(p)
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("mark", help="add a marker (stamped with this machine's clock now)")
    p.add_argument("label", nargs="+", help="what happened, e.g. rupture")
    p.add_argument("--session", "-s", help="session id (default: the one the units record)")
    _add_access(p)
    p.set_defaults(func=cmd_mark)
    p = sub.add_parser("list", help="running and recent sessions")
    p.add_argument("--limit", type=int, default=10, help="recent sessions to show (10)")
    _add_access(p)
    p.set_defaults(func=cmd_list)



def add_console_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``dyadsync hub console`` (registered by :mod:`broker.hub_cli`)."""
    _add_access(p)
    p.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0: the room network)")
    p.add_argument("--port", type=int, default=8081, help="port (default 8081)")
    p.add_argument("--login", type=Path, help="login file (default <out_dir>/console/login.json)")
    p.add_argument("--markers", default=None,
                   help="comma-separated marker buttons (default: task start, task end, rupture, repair)")
    p.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (e.g. tls/server.crt)")
    p.add_argument("--tls-key", type=Path, help="... and this key")
    p.set_defaults(func=cmd_serve)


def add_passwd_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``dyadsync hub console-passwd``."""
    p.add_argument("--config", "-c", type=Path, default=None, help=f"hub TOML config (default {DEFAULT_CONFIG})")
    p.add_argument("--login", type=Path, help="login file (default <out_dir>/console/login.json)")
    p.add_argument("--user", default="operator", help="user name (default operator)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=cmd_passwd)


# --------------------------------------------------------------------------------------------- access
def resolve(args: argparse.Namespace) -> Access:
    from .hub_cli import read_credentials

    cfg = None
    if args.credentials is None or args.config is not None:
        from .hub_config import load_hub_config

        path = args.config or DEFAULT_CONFIG
        if not Path(path).exists():
            raise ConfigError(f"no hub config at {path}: pass --config hub.toml (or --credentials and --units)")
        cfg = load_hub_config(path)
    creds_path = args.credentials or (cfg.out_dir / "services" / "console.toml")
    if not Path(creds_path).exists():
        raise ConfigError(f"no console credentials at {creds_path}: run `dyadsync hub init` first")
    creds = read_credentials(Path(creds_path))
    room = (cfg.room if cfg else None) or creds.get("room")
    if not room:
        raise ConfigError(f"{creds_path} names no room")
    if getattr(args, "units", None):
        units = [u.strip() for u in args.units.split(",") if u.strip()]
    elif cfg is not None:
        units = list(cfg.units)
    else:
        raise ConfigError("name the units that must answer with --units (or use --config)")
    db = getattr(args, "db", None) or (cfg.path(cfg.recorder.db) if cfg else None)
    return Access(room, creds, units, db, cfg.out_dir if cfg else None)


def _console(a: Access, metrics: bool = False):
    from .console import RoomConsole

    c = a.creds
    con = RoomConsole(c["host"], c["port"], a.room, c["username"], c["password"], tls_ca=c["tls_ca"],
                      metrics=metrics, connect_timeout_s=10)
    # retained statuses arrive right after the subscription: give them a moment
    con.wait_status(a.units, lambda s: True, timeout_s=1.5)
    return con


def _t(ns: int | None) -> str:
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _dur(a_ns: int | None, b_ns: int | None) -> str:
    if not a_ns or not b_ns:
        return "-"
    s = max(0, round((b_ns - a_ns) / 1e9))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _running(con, units: list[str]) -> str:
    running = {u: s for u, s in con.running_sessions().items() if u in units}
    sessions = sorted(set(running.values()))
    if not sessions:
        raise ConfigError("no unit reports a running session: give --session")
    if len(sessions) > 1:
        raise ConfigError(f"units record different sessions {running}: give --session")
    return sessions[0]


# ------------------------------------------------------------------------------------------- commands
def cmd_start(args: argparse.Namespace) -> int:
    from . import store
    from .console import check_code, new_session_id

    a = resolve(args)
    therapist, client = check_code("therapist", args.therapist), check_code("client", args.client)
    session = args.session or new_session_id(a.room)
    if a.db is not None and Path(a.db).exists():
        con = store.connect(a.db, readonly=True)
        try:
            meta = store.get_session(con, session)
            if meta is not None and meta["stopped_ns"] is not None:
                raise ConfigError(f"session {session!r} is already recorded (and stopped) at the hub: "
                                  "choose another id")
        finally:
            con.close()
    with _console(a) as con:
        running = {u: s for u, s in con.running_sessions().items() if u in a.units and s != session}
        if running:
            print("note: units already record another session: "
                  + ", ".join(f"{u}: {s}" for u, s in running.items()) + " (they will refuse)")
        r = con.start(session, therapist, client, a.units, timeout_s=args.timeout)
    print(f"start {session} (therapist {therapist}, client {client}) in room {a.room}:")
    print(r.describe())
    if r.ok:
        print("recording. Markers: dyadsync session mark LABEL; stop: dyadsync session stop")
        return 0
    if r.accepted:
        print(f"WARNING: only {', '.join(r.accepted)} record this session. Fix the others and run the same "
              f"start again (units that already record it accept it again), or stop it.")
    else:
        print("nothing was started.")
    return 1


def cmd_stop(args: argparse.Namespace) -> int:
    a = resolve(args)
    with _console(a) as con:
        session = args.session or _running(con, a.units)
        r = con.stop(session, a.units, timeout_s=args.timeout)
    print(f"stop {session}:")
    print(r.describe())
    return 0 if r.ok else 1


def cmd_mark(args: argparse.Namespace) -> int:
    a = resolve(args)
    label = " ".join(args.label)
    with _console(a) as con:
        session = args.session or _running(con, a.units)
        r = con.mark(session, label, a.units, timeout_s=args.timeout)
    print(f"marker {label!r} at {_t(r.time_ns)} in {session}:")
    print(r.describe())
    return 0 if r.ok else 1


def cmd_list(args: argparse.Namespace) -> int:
    from . import store
    from .errors import BrokerError

    a = resolve(args)
    print(f"room {a.room}")
    try:
        with _console(a) as con:
            statuses = dict(con.status)
        print("units:")
        for u in a.units:
            s = statuses.get(u)
            if s is None:
                print(f"  {u:<12} no status (never connected?)")
            else:
                print(f"  {u:<12} {s.state:<12} session {s.session or '-':<28} status of {_t(s.time_ns)}")
    except BrokerError as exc:
        print(f"units: unknown ({exc})")
    if a.db is None or not Path(a.db).exists():
        print("recent sessions: no hub database here (use --db, or run this on the hub)")
        return 0
    con = store.connect(a.db, readonly=True)
    try:
        total = store.count_sessions(con)
        rows = store.list_sessions(con, limit=args.limit, offset=max(0, total - args.limit))
        print(f"recent sessions ({len(rows)} of {total}, latest last):")
        print(f"  {'session':<30} {'therapist':<10} {'client':<10} {'started':<25} {'duration':>9} "
              f"{'markers':>7} {'bad cmds':>8}")
        for r in rows:
            marks = len(store.session_markers(con, r["session"]))
            bad = store.command_counts(con, r["session"])["bad"]
            dur = _dur(r["started_ns"], r["stopped_ns"] or (None if r["stopped_ns"] else time.time_ns()))
            state = "" if r["stopped_ns"] else " (open)"
            print(f"  {r['session']:<30} {r['therapist_code'] or '-':<10} {r['client_code'] or '-':<10} "
                  f"{_t(r['started_ns']):<25} {dur:>9} {marks:>7} {bad:>8}{state}")
    finally:
        con.close()
    return 0


# -------------------------------------------------------------------------------------------- console
def _login_path(args: argparse.Namespace, out_dir: Path | None) -> Path:
    if args.login:
        return args.login
    if out_dir is None:
        raise ConfigError("give --login (or --config so the login lives under the hub's out_dir)")
    return out_dir / "console" / "login.json"


def cmd_passwd(args: argparse.Namespace) -> int:
    from .console_app import write_login

    out_dir = None
    if not args.login:
        from .hub_config import load_hub_config

        out_dir = load_hub_config(args.config or DEFAULT_CONFIG).out_dir
    path = _login_path(args, out_dir)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("new console password: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ")
    write_login(path, args.user, password)
    services = out_dir / "services" / "console.toml" if out_dir else None
    if services is not None and services.exists() and os.geteuid() == 0:
        # the console service reads the login as the account that reads its broker credentials
        st = services.stat()
        os.chown(path, 0, st.st_gid)
        os.chmod(path, 0o640)
    print(f"console login for user {args.user!r} written to {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .console_app import DEFAULT_MARKERS, ConsoleLink, LiveRoom, Login, create_app

    a = resolve(args)
    login = Login.load(_login_path(args, a.out_dir))
    markers = tuple(m.strip() for m in args.markers.split(",") if m.strip()) if args.markers else DEFAULT_MARKERS
    live = LiveRoom(a.room, a.units)
    c = a.creds
    link = ConsoleLink(live, c["host"], c["port"], c["username"], c["password"], tls_ca=c["tls_ca"]).start()
    app = create_app(live, link, login, db_path=a.db, markers=markers, ack_timeout_s=args.timeout)
    tls = {}
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        tls = {"ssl_certfile": str(args.tls_cert), "ssl_keyfile": str(args.tls_key)}
    scheme = "https" if tls else "http"
    print(f"room console of {a.room} on {scheme}://{args.host}:{args.port}/ (units {', '.join(a.units)})")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2, **tls)
    finally:
        link.stop()
    return 0

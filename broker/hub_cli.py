"""``dyadsync hub init|run|serve``: set up a room hub, record it, serve the pull API."""

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
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="serve the read-only pull API (HTTP, bearer token)")
    p.add_argument("--config", "-c", type=Path, help="hub TOML config")
    p.add_argument("--db", type=Path, help="SQLite file (overrides the config)")
    p.add_argument("--token-file", type=Path, help="bearer token file (overrides the config)")
    p.add_argument("--host", help="bind address (default from config, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default from config, else 8080)")
    p.set_defaults(func=cmd_serve)


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
    rec = Recorder(db, room, creds["host"], creds["port"], creds["username"], creds["password"],
                   tls_ca=creds["tls_ca"], **batch)
    rec.start()
    print(f"recording room {room} from {creds['host']}:{creds['port']} into {db} (Ctrl-C to stop)")
    try:
        while not stop.wait(30):
            logger.info("recorder counts: %s", dict(rec.counts))
    finally:
        rec.stop()
        print(f"recorder stopped; counts: {dict(rec.counts)}")
    return 0


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

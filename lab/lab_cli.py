"""``dyadsync lab pull|bids|lsl|broker-init``: the lab side of the rooms.

``pull`` copies new and changed sessions from a hub's pull API into a BIDS dataset (:mod:`lab.bids`);
``bids`` builds or refreshes that dataset from hub databases; ``lsl`` bridges a room to Lab Streaming Layer
(:mod:`lab.lsl`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser("lab", help="lab side: pull sessions from room hubs")
    sub = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    p = sub.add_parser("pull", help="fetch new and changed sessions (incremental, resumable, verified)")
    p.add_argument("--hub", required=True, help="hub pull API URL, e.g. http://hub.lan:8080")
    p.add_argument("--token-file", required=True, type=Path, help="file holding the hub's API bearer token")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--name", default="dyadsync recordings", help="dataset name (dataset_description.json)")
    p.add_argument("dest", type=Path, help="the lab's BIDS dataset (hub exports are kept in DEST/sourcedata/)")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("bids", help="build or refresh the BIDS dataset from hub databases (no network)")
    p.add_argument("--db", type=Path, action="append", default=[],
                   help="a hub database (hub.sqlite) whose sessions are exported into the dataset; repeatable")
    p.add_argument("--session", action="append", help="only this session (repeatable; default all)")
    p.add_argument("--name", default="dyadsync recordings", help="dataset name (dataset_description.json)")
    p.add_argument("dest", type=Path, help="the BIDS dataset (created if missing)")
    p.set_defaults(func=cmd_bids)

    from .lsl import register as register_lsl

    register_lsl(sub)

    p = sub.add_parser("broker-init", help="write a lab broker config that room hubs bridge into")
    p.add_argument("--rooms", required=True, help="comma-separated room ids")
    p.add_argument("--host", default="0.0.0.0", help="listener address (default all interfaces)")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--user", default="mosquitto", help="user Mosquitto drops to when started as root")
    p.add_argument("out_dir", type=Path)
    p.set_defaults(func=cmd_broker_init)


def cmd_broker_init(args: argparse.Namespace) -> int:
    from broker.hub_init import init_lab_broker

    rooms = [r.strip() for r in args.rooms.split(",") if r.strip()]
    layout = init_lab_broker(args.out_dir, rooms, host=args.host, port=args.port, run_as_user=args.user)
    print(f"lab broker files written to {layout.out_dir}: mosquitto -c {layout.broker.conf}")
    for room, path in layout.bridge_password_files.items():
        print(f"  room {room}: bridge user bridge-{room}, password file {path} (hub.toml [bridge].password_file)")
    print(f"  lab recorder: dyadsync hub run --room + --db lab.sqlite --credentials {layout.recorder_file}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from broker.api import read_token

    from .puller import LabPuller

    with LabPuller(args.hub, read_token(args.token_file), args.dest, progress=not args.no_progress) as puller:
        r = puller.pull()
    print(f"sessions: {r.sessions_seen} changed, {r.sessions_pulled} pulled, {r.sessions_skipped} already current; "
          f"files: {r.files_downloaded} downloaded ({r.resumed_files} resumed), {r.files_unchanged} unchanged; "
          f"{r.bytes_downloaded} bytes")
    if r.changing:
        print(f"still changing (live), pulled again next run: {', '.join(r.changing)}")
    if r.bids is not None:
        _print_bids(r.bids, args.dest)
    return 0 if r.bids is None or not r.bids.failed else 1


def _print_bids(b, dest: Path) -> None:
    print(f"BIDS dataset {dest}: {len(b.written)} session(s) written, {b.unchanged} unchanged")
    if b.running:
        print(f"  still running (not in the dataset until stopped): {', '.join(b.running)}")
    if b.failed:
        print(f"  NOT written (see the log above): {', '.join(b.failed)}")


def cmd_bids(args: argparse.Namespace) -> int:
    from . import bids

    for db in args.db:
        if not db.is_file():
            raise bids.BidsError(f"hub database {db} does not exist")
        bids.mirror_from_db(db, args.dest, args.session)
    r = bids.sync_dataset(args.dest, name=args.name)
    _print_bids(r, args.dest)
    return 0 if not r.failed else 1

"""``dyadsync lab pull``: copy new and changed sessions from a hub's pull API into a lab directory."""

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
    p.add_argument("dest", type=Path, help="lab directory (sessions land in DEST/<room>/<session>/)")
    p.set_defaults(func=cmd_pull)


def cmd_pull(args: argparse.Namespace) -> int:
    from .api import read_token
    from .puller import LabPuller

    with LabPuller(args.hub, read_token(args.token_file), args.dest, progress=not args.no_progress) as puller:
        r = puller.pull()
    print(f"sessions: {r.sessions_seen} changed, {r.sessions_pulled} pulled, {r.sessions_skipped} already current; "
          f"files: {r.files_downloaded} downloaded ({r.resumed_files} resumed), {r.files_unchanged} unchanged; "
          f"{r.bytes_downloaded} bytes")
    return 0

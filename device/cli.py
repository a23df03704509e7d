"""The ``dyadsync`` console script.

Each subcommand lives in the package that owns it, in a module with ``register(subparsers)``; this file
only assembles them, so packages can grow their commands without touching each other.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from firmware_bridge.errors import DyadsyncError

# Modules that provide subcommands, in --help order. A module that does not exist (yet) is skipped; a
# module that exists but fails to import is an error, never hidden.
COMMAND_MODULES = (
    "hil.demo",          # dyadsync demo
    "device.unit_cli",   # dyadsync unit run|status|check-config
    "broker.hub_cli",    # dyadsync hub init|run|serve
    "broker.lab_cli",    # dyadsync lab pull
    "hil.hil_cli",       # dyadsync hil list|run
    "broker.report_cli", # dyadsync report, dyadsync study
)


def build_parser() -> argparse.ArgumentParser:
    from device import __version__

    parser = argparse.ArgumentParser(
        prog="dyadsync",
        description="Live physiological synchrony between therapist and client, measured in the therapy room.",
    )
    parser.add_argument("--version", action="version", version=f"dyadsync {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except DyadsyncError as exc:
        print(f"dyadsync: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dyadsync: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

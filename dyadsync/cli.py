"""The ``dyadsync`` console script.

Each subcommand lives in the package that owns it, in a module with ``register(subparsers)``; this file,
at the top of the layers, only assembles them. A command whose role is not installed (a unit installed
with ``pip install 'dyadsync[unit]'`` has no hub or lab packages) is still listed, and running it says
which extra to install; a command module that fails to import for any other reason is an error.

``dyadsync COMMAND ...`` loads only that command's module (the others import the unit daemon, the hub, the
simulators: about half a second that ``dyadsync report`` would wait for); ``dyadsync`` without a command, or
with one it does not know, loads them all to list them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from types import ModuleType

from core import __version__
from core.errors import DyadsyncError

# Our own top-level packages: a ModuleNotFoundError naming one of these is a bug, never a missing extra.
_OWN = {"core", "dsp_ext", "firmware_bridge", "broker", "device", "lab", "hil", "dyadsync"}


def _load(loader: Callable[[], ModuleType]) -> ModuleType | ModuleNotFoundError:
    try:
        return loader()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in _OWN:
            raise
        return exc


def _demo() -> ModuleType:
    from hil import demo
    return demo


def _unit() -> ModuleType:
    from device import unit_cli
    return unit_cli


def _hub() -> ModuleType:
    from broker import hub_cli
    return hub_cli


def _session() -> ModuleType:
    from broker import session_cli
    return session_cli


def _lab() -> ModuleType:
    from lab import lab_cli
    return lab_cli


def _hil() -> ModuleType:
    from hil import hil_cli
    return hil_cli


def _setup() -> ModuleType:
    from dyadsync import setup
    return setup


def _report() -> ModuleType:
    from lab import report_cli
    return report_cli


# (command names, loader, the extra that provides its dependencies), in --help order.
COMMANDS: tuple[tuple[tuple[str, ...], Callable[[], ModuleType], str], ...] = (
    (("demo",), _demo, "hub,lab"),
    (("unit",), _unit, "unit"),
    (("hub",), _hub, "hub"),
    (("session",), _session, "hub"),
    (("lab",), _lab, "lab"),
    (("hil",), _hil, "hub,lab"),
    (("report", "study"), _report, "lab"),
    (("setup",), _setup, "unit"),
)


def _missing(names: tuple[str, ...], extra: str, exc: ModuleNotFoundError, sub: argparse._SubParsersAction) -> None:
    def fail(args: argparse.Namespace) -> int:
        print(f"dyadsync {args.command}: needs the Python package '{exc.name}', which this installation does not "
              f"have. Install the role's extra: pip install 'dyadsync[{extra}]'", file=sys.stderr)
        return 2

    for name in names:
        p = sub.add_parser(name, help=f"(not installed: pip install 'dyadsync[{extra}]')", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=fail)


def _command_of(argv: list[str]) -> str | None:
    """The command ``argv`` names (its first word that is not an option: the top-level options take no value),
    if it is one of :data:`COMMANDS`."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if any(first in names for names, _, _ in COMMANDS) else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the one command ``only`` (the only module then loaded)."""
    parser = argparse.ArgumentParser(
        prog="dyadsync",
        description="Live physiological synchrony between therapist and client, measured in the therapy room.",
    )
    parser.add_argument("--version", action="version", version=f"dyadsync {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for names, loader, extra in COMMANDS:
        if only is not None and only not in names:
            continue
        mod = _load(loader)
        if isinstance(mod, ModuleNotFoundError):
            _missing(names, extra, mod, sub)
        else:
            mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command_of(argv))
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

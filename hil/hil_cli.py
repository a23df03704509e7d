"""``dyadsync hil list``, ``dyadsync hil run <scenario> [--speed N] [--seed S]`` and
``dyadsync hil study --dyads N --sessions M --effect X --out DIR`` (a simulated study, :mod:`hil.study_sim`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import sim_unit


def register(subparsers: argparse._SubParsersAction) -> None:
    hil = subparsers.add_parser("hil", help="simulated therapy room scenarios against the real daemons")
    sub = hil.add_subparsers(dest="hil_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="list the scenarios")
    p.add_argument("--short", action="store_true", help="show the lengths of the short (test) variants")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("run", help="run a scenario, print its scores; exit 1 if a score misses")
    p.add_argument("scenario", help="scenario name (see `dyadsync hil list`)")
    p.add_argument("--speed", type=float, help="simulated seconds per real second (default: the scenario's)")
    p.add_argument("--seed", type=int, help="seed of the simulated dyad (default: the scenario's)")
    p.add_argument("--short", action="store_true", help="the short variant the default test run uses")
    p.add_argument("--workdir", type=Path,
                   help="keep broker files, hub database, unit data and logs here (default: a new temporary "
                        "directory, removed when every score passes, kept and named when not)")
    p.add_argument("--broker-port", type=int, help="Mosquitto's loopback port (default: a free one)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_run)
    from . import study_sim

    study_sim.register(sub)
    sim_unit.register(sub)


def cmd_list(args: argparse.Namespace) -> int:
    from .scenarios import catalogue, missing_requirements

    for s in catalogue(args.short).values():
        missing = missing_requirements(s)
        units = ", ".join(f"{u.name}({'+'.join(r[0].upper() for r in u.roles)}, {u.wiring})" for u in s.units)
        faults = "; ".join(f"{f.kind}@{f.at_s:g}s" for f in s.faults) or "no faults"
        avail = "" if not missing else f"  [needs {', '.join(missing)}]"
        print(f"{s.name:<18}{s.description}{avail}")
        print(f"{'':<18}{s.session_s:g} s session at {s.speed:g}x; units {units}; {faults}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .scenarios import run_scenario

    if args.speed is not None and not args.speed > 0:
        print("dyadsync hil run: --speed must be > 0", file=sys.stderr)
        return 2
    rep = run_scenario(args.scenario, short=args.short, speed=args.speed, seed=args.seed, workdir=args.workdir,
                       verbose=args.verbose > 0, broker_port=args.broker_port)
    print(json.dumps(rep.to_json(), indent=1) if args.json else rep.table())
    if args.json and rep.workdir:
        print(f"work directory (kept): {rep.workdir}", file=sys.stderr)
    return 0 if rep.passed else 1

"""HIL scenarios: a simulated room run against the real daemons and scored against the ground truth.

``run_scenario(name)`` runs one (see :mod:`hil.scenarios.runner`) and returns its
:class:`~hil.scenarios.scoring.Report`; ``catalogue(short)`` lists them. docs/hil.md describes them all.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .catalogue import FAULT_KINDS, Fault, Scenario, SegmentPlan, UnitPlan, catalogue, missing_requirements
from .runner import Runner, RunRecord, ScenarioError
from .scoring import Report, Score, score

__all__ = ["FAULT_KINDS", "Fault", "Report", "RunRecord", "Runner", "Scenario", "ScenarioError", "Score",
           "SegmentPlan", "UnitPlan", "catalogue", "get", "missing_requirements", "run_scenario", "score"]


def get(name: str, short: bool = False) -> Scenario:
    scenarios = catalogue(short)
    if name not in scenarios:
        raise ScenarioError(f"unknown scenario {name!r}; `dyadsync hil list` shows: {', '.join(scenarios)}")
    return scenarios[name]


def run_scenario(name: str | Scenario, *, short: bool = False, speed: float | None = None, seed: int | None = None,
                 workdir: Path | str | None = None, verbose: bool = False, broker_port: int | None = None) -> Report:
    """Run a scenario end to end and score it. Raises :class:`ScenarioError` if it cannot run at all (its
    message names the cause and the work directory, which is kept).

    Without ``workdir`` the run uses a new private temporary directory, removed after a run whose every
    score passed and kept otherwise (``Report.workdir`` names it); a given ``workdir`` is always kept.
    """
    s = name if isinstance(name, Scenario) else get(name, short)
    missing = missing_requirements(s)
    if missing:
        raise ScenarioError(f"scenario {s.name} needs {', '.join(missing)}, not in this build")
    runner = Runner(s, speed=speed, seed=seed, workdir=workdir, verbose=verbose, broker_port=broker_port)
    rep = score(runner.run())
    if workdir is None and rep.passed:
        shutil.rmtree(runner.workdir, ignore_errors=True)
        rep.workdir = ""
    return rep

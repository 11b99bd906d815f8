"""Run one PuLP model through CBC and read back status, objective and CBC's best bound.

PuLP does not return CBC's bound, so the solver log goes to a temporary file and the summary
lines (``Result - …``, ``Objective value:``, ``Lower bound:``) are parsed from it.
"""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulp

__all__ = ["CbcResult", "new_var", "solve"]

_LOWER = re.compile(r"^Lower bound:\s*(\S+)", re.MULTILINE)


@dataclass(frozen=True)
class CbcResult:
    """``status``: optimal | feasible (stopped with an incumbent) | infeasible | no_solution."""

    status: str
    objective: float | None
    bound: float | None
    time_s: float


def _bound_from_log(text: str, status: str, objective: float | None) -> float | None:
    if status == "optimal":
        return objective
    match = _LOWER.search(text)
    if match is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


def new_var(prob: pulp.LpProblem, name: str, *, low: float | None = None,
            up: float | None = None, cat: str = "Continuous") -> pulp.LpVariable:
    """A variable attached to ``prob`` (PuLP >= 3.3 API; plain LpVariable on older PuLP)."""
    if hasattr(prob, "add_variable"):
        return prob.add_variable(name, low, up, cat=cat)
    return pulp.LpVariable(name, lowBound=low, upBound=up, cat=cat)


def _solver(**options: Any) -> pulp.LpSolver:
    """System CBC through COIN_CMD when installed (``pip install pulp[cbc]``), else the CBC
    binary bundled with PuLP; PuLP 3.3 deprecates the latter for 4.0, hence the filter."""
    coin = pulp.COIN_CMD(**options)
    if coin.available():
        return coin
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(**options)


def solve(prob: pulp.LpProblem, *, time_limit_s: float, rel_gap: float, warm: bool) -> CbcResult:
    """Solve ``prob`` in place with CBC's serial search (deterministic when it ends optimal).

    ``threads`` is left unset on purpose: CBC 2.10 with ``-threads 1`` can idle 10 s in its
    thread start-up when the root node already closes the problem.
    """
    with tempfile.TemporaryDirectory(prefix="moesim-cbc-") as tmp:
        log_path = Path(tmp) / "cbc.log"
        solver = _solver(msg=False, timeLimit=max(0.05, float(time_limit_s)),
                         gapRel=rel_gap if rel_gap > 0 else None,
                         warmStart=warm, logPath=str(log_path))
        t0 = time.perf_counter()
        prob.solve(solver)
        elapsed = time.perf_counter() - t0
        text = log_path.read_text() if log_path.exists() else ""
    sol = prob.sol_status
    stopped = "Stopped on" in text or "gap tolerance" in text
    if sol == pulp.LpSolutionOptimal and not stopped:
        status = "optimal"
    elif sol in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        status = "feasible"
    elif sol == pulp.LpSolutionInfeasible or "infeasible" in text.lower():
        status = "infeasible"
    else:
        status = "no_solution"
    objective = pulp.value(prob.objective) if status in ("optimal", "feasible") else None
    objective = None if objective is None else float(objective)
    return CbcResult(status, objective, _bound_from_log(text, status, objective), elapsed)

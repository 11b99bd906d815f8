"""The layer table of ARCHITECTURE.md, enforced: each package imports only what it may."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "moesim"

# package -> moesim packages it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "config": {"core"},
    "spec": {"config", "core"},
    "hardware": {"config", "core"},
    "network": {"config", "core"},
    "workload": {"config", "core"},
    "policies": {"spec", "hardware", "network", "workload", "config", "core"},
    "metrics": {"core"},
    "engine": {"policies", "spec", "hardware", "network", "workload", "metrics", "config", "core"},
    "report": {"metrics", "core"},
    "calibration": {"spec", "hardware", "config", "core"},
    "sweep": {"engine", "metrics", "config", "core"},
    "cli": {"sweep", "report", "calibration", "engine", "metrics", "config", "spec", "core"},
}
# third-party library -> the only packages that may import it
HOMES: dict[str, set[str]] = {
    "simpy": {"engine"}, "networkx": {"network"}, "plotly": {"report"}, "pydantic": {"config"},
    "yaml": {"config"}, "torch": {"calibration"}, "pulp": {"policies"}, "ray": {"sweep"},
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem != "__init__" else ""


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


MODULES = sorted(p for p in PKG.rglob("*.py") if _package_of(p))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_module_respects_layer_table(path: Path) -> None:
    pkg = _package_of(path)
    assert pkg in ALLOWED, f"{pkg} is not in the layer table; add it to ARCHITECTURE.md and this test"
    for name in _imports(path):
        top, _, rest = name.partition(".")
        if top == "moesim" and rest:
            target = rest.split(".")[0]
            assert target == pkg or target in ALLOWED[pkg], f"{path.name}: {pkg} may not import moesim.{target}"
        elif top in HOMES:
            assert pkg in HOMES[top], f"{path.name}: only {HOMES[top]} may import {top}"


def test_a_violation_would_be_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from moesim.engine.run import run\nimport simpy\n")
    assert {"moesim.engine.run", "simpy"} <= _imports(bad)
    assert "engine" not in ALLOWED["policies"] and "policies" not in HOMES["simpy"]

"""Every scenario shipped in scenarios/ loads and validates (a typo there would break a user's first run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.config.load import load_scenario

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").glob("*.yaml"))


def test_there_are_shipped_scenarios() -> None:
    assert len(SCENARIOS) >= 5


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_a_shipped_scenario_validates(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem

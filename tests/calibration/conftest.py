"""Fixtures of the calibration tests (helpers live in calib_synthetic.py)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import pytest

from calib_synthetic import roofline_samples, write_synthetic


@pytest.fixture
def roofline_profile(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a profile file reproducing the roofline (x ``scale``)."""
    def make(scale: float = 1.0, name: str = "roof.json") -> Path:
        return write_synthetic(tmp_path / name, roofline_samples(scale=scale))
    return make


@pytest.fixture(scope="session")
def cpu_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real profile measured on this CPU at tiny sizes (``--quick``), shared by the torch tests."""
    pytest.importorskip("torch")
    from moesim.calibration.measure import calibrate
    out = tmp_path_factory.mktemp("cal") / "cpu.json"
    calibrate(out, device="cpu", quick=True, repeats=3, stream=io.StringIO())
    return out

"""Shared fixtures: where the team's shared traces live, and small scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_TRACES = REPO.parent / "shared" / "traces"


@pytest.fixture
def azure_conv() -> Path:
    """The Azure 2023 conversation trace in ../shared/traces (skips when absent)."""
    path = SHARED_TRACES / "azure-llm-inference-2023" / "AzureLLMInferenceTrace_conv.csv"
    if not path.is_file():
        pytest.skip(f"trace not found at {path}; see traces/README.md for the download")
    return path


@pytest.fixture(scope="session")
def load_benchmark():  # type: ignore[no-untyped-def]
    """``load_benchmark(name)``: the module ``benchmarks/<name>.py`` (scripts, not a package)."""
    import importlib.util

    def load(name: str):  # type: ignore[no-untyped-def]
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load

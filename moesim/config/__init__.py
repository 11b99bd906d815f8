"""Scenario models (pydantic), YAML loading, ``--set`` overrides and presets."""

from moesim.config.load import load_scenario, scenario_hash
from moesim.config.schema import GpuSpec, ModelSpec, Scenario

__all__ = ["GpuSpec", "ModelSpec", "Scenario", "load_scenario", "scenario_hash"]

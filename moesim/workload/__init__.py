"""Workloads: request sets (synthetic or trace replay) and per-pass expert-routing loads.

Imports only ``moesim.core`` and ``moesim.config.schema`` (plus numpy and pandas).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moesim.config.schema import SyntheticWorkloadCfg, TraceWorkloadCfg
from moesim.workload.azure import read_azure_trace
from moesim.workload.routing_load import RoutingLoadGenerator
from moesim.workload.synthetic import synthetic_requests
from moesim.workload.types import RequestSet

__all__ = ["RequestSet", "RoutingLoadGenerator", "build_requests", "read_azure_trace", "synthetic_requests"]


def build_requests(cfg: SyntheticWorkloadCfg | TraceWorkloadCfg, rng: np.random.Generator, *,
                   base_dir: str | Path | None = None) -> RequestSet:
    """The requests of ``cfg``: synthetic for ``poisson``/``gamma``, a trace replay for ``azure_trace``.

    Args:
        cfg: ``Scenario.workload``.
        rng: the workload stream (unused by trace replay, which is deterministic).
        base_dir: the scenario file's folder, against which a relative trace path resolves first.
    """
    if cfg.kind == "azure_trace":
        return read_azure_trace(cfg, base_dir=base_dir)
    if cfg.kind in ("poisson", "gamma"):
        return synthetic_requests(cfg, rng)
    raise ValueError(f"unknown workload kind {cfg.kind!r}")  # unreachable: the schema's Literal

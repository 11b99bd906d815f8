"""Workloads: request sets (synthetic or trace replay) and per-pass expert-routing loads.

Imports only ``moesim.core`` and ``moesim.config.schema`` (plus numpy and pandas).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moesim.config.schema import RoutingLoadCfg, SyntheticWorkloadCfg, TraceWorkloadCfg
from moesim.core.errors import ConfigError
from moesim.workload.azure import read_azure_trace
from moesim.workload.dynamic_routing import DynamicRouting, base_popularity
from moesim.workload.layer_transitions import coupled_transitions, load_transitions
from moesim.workload.routing_fit import FittedRouting
from moesim.workload.routing_fit import fit as fit_routing
from moesim.workload.routing_load import STATIC_KINDS, RoutingLoadGenerator
from moesim.workload.routing_model import RoutingModel
from moesim.workload.routing_trace import RoutingTrace, read_esft_routing, read_routing_trace, write_routing_trace
from moesim.workload.source_split import split_by_source, split_tokens_by_source
from moesim.workload.synthetic import synthetic_requests
from moesim.workload.trace_replay import TraceExhausted, TraceReplay
from moesim.workload.types import RequestSet

__all__ = [
    "DynamicRouting", "FittedRouting", "RequestSet", "RoutingLoadGenerator", "RoutingModel", "RoutingTrace",
    "TraceExhausted", "TraceReplay", "build_requests", "build_routing", "fit_routing", "load_routing_trace",
    "read_azure_trace", "read_esft_routing", "read_routing_trace", "split_by_source", "split_tokens_by_source",
    "synthetic_requests", "write_routing_trace",
]


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


def build_routing(cfg: RoutingLoadCfg, *, n_layers: int, n_experts: int, top_k: int, rng: np.random.Generator,
                  base_dir: str | Path | None = None) -> RoutingModel:
    """The routing-load model of ``cfg`` (``Scenario.routing``) for a model's MoE shape.

    ``uniform``/``zipf``/``hot_experts``/``dirichlet``: ``RoutingLoadGenerator``; ``drift``,
    ``correlated`` and ``fitted``: ``DynamicRouting``; ``trace``: ``TraceReplay``. Check
    ``.stationary`` before pooling ``sample_many`` draws; non-stationary models are driven pass
    by pass with ``next_pass(tokens)``.

    Args:
        cfg: the routing config.
        n_layers, n_experts, top_k: the model's MoE layers, routed experts per layer and experts per token.
        rng: the routing stream (construction draws, then every pass).
        base_dir: the scenario file's folder, against which relative file paths resolve first.

    Raises:
        ConfigError: a file is missing or unreadable, or a trace's shape does not match the model
            (field ``routing.trace_path`` / ``routing.layer_correlation``).
    """
    if cfg.kind in STATIC_KINDS:
        return RoutingLoadGenerator(cfg, n_layers=n_layers, n_experts=n_experts, top_k=top_k, rng=rng)
    if not 1 <= top_k <= n_experts:
        raise ConfigError(f"top_k={top_k} must be in [1, n_experts={n_experts}]", field="model.moe.top_k")
    shape = {"n_layers": n_layers, "n_experts": n_experts, "top_k": top_k}
    if cfg.kind in ("drift", "correlated"):
        pop = base_popularity(cfg, **shape, rng=rng)
        if cfg.kind == "drift":
            return DynamicRouting(popularity=pop, top_k=top_k, rng=rng, drift_sigma=cfg.drift_sigma,
                                  drift_tau=cfg.drift_tau_passes, name="drift")
        if isinstance(cfg.layer_correlation, str):
            path = _resolve(cfg.layer_correlation, base_dir, "routing.layer_correlation", want_dir=False)
            q, rho = load_transitions(path, n_layers=n_layers, n_experts=n_experts), 1.0
        else:
            q, rho = coupled_transitions(pop, rng), cfg.layer_correlation
        return DynamicRouting(popularity=pop, top_k=top_k, rng=rng, transitions=q if n_layers > 1 else None,
                              rho=rho, name="correlated")
    trace = load_routing_trace(cfg, base_dir=base_dir)
    got = {"n_layers": trace.n_layers, "n_experts": trace.n_experts, "top_k": trace.top_k}
    if got != shape:
        raise ConfigError(f"routing trace {trace.meta.get('source', cfg.trace_path)!r} has {got}, the model needs "
                          f"{shape}; record (or pick) a trace of this model", field="routing.trace_path")
    if cfg.kind == "trace":
        return TraceReplay(trace, rng=rng, cycle=cfg.trace_cycle)
    return fit_routing(trace).generator(rng, drift=cfg.fit_drift)


def load_routing_trace(cfg: RoutingLoadCfg, *, base_dir: str | Path | None = None) -> RoutingTrace:
    """The trace ``cfg.trace_path`` names: a moesim ``.npz`` or an ESFT routing folder, re-binned to
    ``cfg.trace_tokens_per_step`` when set (ESFT default 1024 tokens per step)."""
    if cfg.trace_path is None:
        raise ConfigError(f"kind={cfg.kind} needs trace_path", field="routing.trace_path")
    path = _resolve(cfg.trace_path, base_dir, "routing.trace_path", want_dir=None)
    if path.is_dir():
        return read_esft_routing(path, tokens_per_step=cfg.trace_tokens_per_step or 1024)
    trace = read_routing_trace(path)
    if cfg.trace_tokens_per_step is not None and cfg.trace_tokens_per_step != trace.tokens_per_step:
        if trace.token_experts is None:
            raise ConfigError(f"{path}: trace_tokens_per_step={cfg.trace_tokens_per_step} needs per-token "
                              f"expert ids; this trace has counts only", field="routing.trace_tokens_per_step")
        trace = trace.rebin(cfg.trace_tokens_per_step)
    return trace


def _resolve(path: str, base_dir: str | Path | None, field: str, *, want_dir: bool | None) -> Path:
    """``path`` as is when absolute, else against ``base_dir`` then the cwd (a file, or a folder too
    when ``want_dir`` is None)."""
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else (
        ([Path(base_dir) / given] if base_dir is not None else []) + [Path.cwd() / given])
    for c in candidates:
        if c.is_file() or (want_dir is None and c.is_dir()):
            return c
    looked = ", ".join(str(c.resolve()) for c in candidates)
    raise ConfigError(f"{path!r} not found (looked in: {looked}); see traces/README.md (routing traces)", field=field)

"""Resolve a Scenario into the runtime pieces of an inference run (no simulation here)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config.presets import load_gpu, load_model
from moesim.config.schema import GpuSpec, ModelSpec, Scenario
from moesim.config.topology import load_topology
from moesim.core.errors import ConfigError
from moesim.hardware.cost import CostModel, build_cost_model
from moesim.hardware.profile import Profile, ProfileError, load_profile
from moesim.engine.memory import MemoryBudget, memory_budget
from moesim.network.collectives import CollectiveCost, SimpleCollectives
from moesim.network.faults import FaultSet
from moesim.network.flow_collectives import FlowCollectives
from moesim.network.link_load import LinkLoadCollectives
from moesim.network.topology import Topology
from moesim.spec.model import ModelShape

__all__ = ["Deployment", "ZeroCollectives", "build_deployment", "load_calibration", "resolve_gpu", "resolve_model"]


def resolve_model(scenario: Scenario) -> ModelSpec:
    """The scenario's model (preset name or inline spec)."""
    return load_model(scenario.model) if isinstance(scenario.model, str) else scenario.model


def resolve_gpu(scenario: Scenario) -> GpuSpec:
    """The scenario's GPU (preset name or inline spec)."""
    gpu = scenario.hardware.gpu
    return load_gpu(gpu) if isinstance(gpu, str) else gpu


class ZeroCollectives:
    """Free communication (``hardware.cost.kind=constant``)."""

    def all_reduce_s(self, group: tuple[int, ...], nbytes: object) -> float | np.ndarray:
        return np.zeros(np.shape(nbytes)) if np.ndim(nbytes) else 0.0

    all_gather_s = reduce_scatter_s = all_reduce_s

    def all_to_all_s(self, group: tuple[int, ...], pair_bytes: np.ndarray) -> np.ndarray:
        return np.zeros(np.shape(pair_bytes)[:-2])

    def p2p_s(self, src: int, dst: int, nbytes: object) -> float | np.ndarray:
        return np.zeros(np.shape(nbytes)) if np.ndim(nbytes) else 0.0


@dataclass(frozen=True)
class Deployment:
    """Everything about where and how the model runs, resolved and checked."""

    model: ModelSpec
    gpu: GpuSpec
    shape: ModelShape
    topology: Topology
    cost: CostModel
    collectives: CollectiveCost
    budget: MemoryBudget
    replica_gpus: tuple[tuple[int, ...], ...]
    faults: tuple[tuple[float, Topology], ...] = ()
    """``(time, topology from then on)`` for every fault change (partitions raised at build)."""


def _check_parallelism(scenario: Scenario, model: ModelSpec, topo: Topology) -> None:
    dep = scenario.deployment
    need = dep.replicas * dep.gpus_per_replica
    if need > topo.n_gpus:
        raise ConfigError(
            f"{dep.replicas} replicas x {dep.gpus_per_replica} GPUs = {need} GPUs but topology "
            f"{topo.name!r} has {topo.n_gpus}; lower deployment.replicas / gpus_per_replica or pick a "
            "larger hardware.topology", field="deployment.replicas")
    if model.moe is not None and model.moe.n_routed_experts % dep.ep:
        raise ConfigError(
            f"{model.moe.n_routed_experts} experts of {model.name} are not divisible by ep={dep.ep}; "
            "choose an ep that divides the expert count", field="deployment.ep")
    if model.attention.n_heads % dep.attention_tp:
        raise ConfigError(
            f"{model.attention.n_heads} attention heads of {model.name} are not divisible by "
            f"attention_tp={dep.attention_tp}; choose a TP degree that divides the head count",
            field="deployment.attention_tp")


def load_calibration(spec: str | None) -> tuple[Profile | None, str]:
    """The profile ``hardware.calibration`` names (``PATH`` or ``PATH#graph`` for CUDA-graph timings)."""
    if spec is None:
        return None, "eager"
    path, _, mode = spec.partition("#")
    mode = mode or "eager"
    if mode not in ("eager", "graph"):
        raise ConfigError(f"unknown timing mode {mode!r} after '#'; use PATH, PATH#eager or PATH#graph",
                          field="hardware.calibration")
    try:
        profile = load_profile(path)
        profile.tables(mode)
    except ProfileError as e:
        raise ConfigError(str(e).removeprefix("hardware.calibration: "), field="hardware.calibration") from e
    return profile, mode


def build_collectives(scenario: Scenario, topo: Topology) -> CollectiveCost:
    """The communication model ``hardware.network`` names (free with the constant cost model)."""
    cost_cfg, net = scenario.hardware.cost, scenario.hardware.network
    if cost_cfg.kind == "constant":
        return ZeroCollectives()
    if net.model == "flow":
        kind = LinkLoadCollectives if net.all_to_all == "congestion" else FlowCollectives
        return kind(topo, efficiency=cost_cfg.network_efficiency, all_reduce_algorithm=net.all_reduce, ecmp=net.ecmp)
    return SimpleCollectives(topo, efficiency=cost_cfg.network_efficiency, all_reduce_algorithm=net.all_reduce)


def build_deployment(scenario: Scenario) -> Deployment:
    """Resolve presets, check parallelism and memory, build cost and network models."""
    model, gpu = resolve_model(scenario), resolve_gpu(scenario)
    dep = scenario.deployment
    topo = Topology.from_spec(load_topology(scenario.hardware.topology))
    _check_parallelism(scenario, model, topo)
    shape = ModelShape.build(model, weight_dtype=dep.weight_dtype, kv_dtype=dep.kv_dtype,
                             activation_dtype=dep.activation_dtype)
    budget = memory_budget(shape, gpu, dep, scenario.scheduler,
                           redundant_experts=scenario.placement.redundant_experts)
    cost_cfg = scenario.hardware.cost
    profile, mode = load_calibration(scenario.hardware.calibration)
    cost = build_cost_model(gpu, cost_cfg, weight_dtype=dep.weight_dtype, activation_dtype=dep.activation_dtype,
                            profile=profile, profile_mode=mode)
    coll = build_collectives(scenario, topo)
    g = dep.gpus_per_replica
    replica_gpus = tuple(tuple(range(r * g, (r + 1) * g)) for r in range(dep.replicas))
    faults = tuple(FaultSet(scenario.hardware.faults).schedule(topo)) if scenario.hardware.faults else ()
    return Deployment(model, gpu, shape, topo, cost, coll, budget, replica_gpus, faults)

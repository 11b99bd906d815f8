"""Build a replica's MoE runtime from the scenario: placement (planned once here), balancer, shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.config.schema import Scenario
from moesim.core.errors import ConfigError
from moesim.engine.moe_layer import MoeShape
from moesim.engine.moe_pool import MoeRuntime
from moesim.policies.balance import BALANCERS, BalancePolicy
from moesim.policies.placement import PLACEMENTS, Placement
from moesim.workload import RoutingModel

if TYPE_CHECKING:
    from moesim.engine.build import Deployment

__all__ = ["build_balancer", "build_moe_runtime", "moe_shape", "plan_placement", "slots_per_rank"]


def slots_per_rank(scenario: Scenario, n_experts: int) -> int:
    """Expert slots per EP rank per layer: (E + redundant) / ep, which must divide evenly."""
    slots = n_experts + scenario.placement.redundant_experts
    ep = scenario.deployment.ep
    if slots % ep:
        raise ConfigError(f"{n_experts} experts + {scenario.placement.redundant_experts} redundant = {slots} slots "
                          f"do not divide over ep={ep}; choose redundant_experts so the total is a multiple of ep",
                          field="placement.redundant_experts")
    return slots // ep


def moe_shape(d: Deployment, scenario: Scenario, gpus: tuple[int, ...]) -> MoeShape:
    """Per-GPU MoE shapes of a replica on ``gpus``."""
    m, dep = d.model, scenario.deployment
    assert m.moe is not None
    return MoeShape(hidden=m.hidden_size, intermediate_per_gpu=m.moe.expert_intermediate // dep.expert_tp,
                    act_bytes=d.shape.act_bytes_per_elem,
                    expert_bytes_per_gpu=d.shape.expert_params * d.shape.weight_bytes_per_param / dep.expert_tp,
                    expert_tp=dep.expert_tp, gpus=gpus)


def _placement_kwargs(scenario: Scenario, n_nodes: int) -> dict[str, Any]:
    pc = scenario.placement
    if pc.kind == "eplb":
        return {"n_groups": pc.groups, "n_nodes": n_nodes}
    if pc.kind == "ilp":
        return {"time_limit_s": pc.time_limit_s, "replicas": pc.redundant_experts}
    return {}


def plan_placement(scenario: Scenario, d: Deployment, gpus: tuple[int, ...], load: np.ndarray, *,
                   transitions: np.ndarray | None = None) -> Placement:
    """Run the configured placement policy on ``load [L, E]`` for the replica on ``gpus``."""
    m, dep = d.model, scenario.deployment
    assert m.moe is not None
    ranks = np.asarray(gpus[::dep.expert_tp])
    topo = d.topology
    bandwidth = topo.bottleneck_bytes_per_s[np.ix_(ranks, ranks)]
    n_nodes = len(set(topo.node_of[ranks].tolist()))
    shape = moe_shape(d, scenario, gpus)
    spare = d.budget.usable_bytes - d.budget.weight_bytes - d.budget.activation_bytes
    experts_now = slots_per_rank(scenario, m.moe.n_routed_experts) * m.n_moe_layers
    hbm_free = np.full(dep.ep, spare + experts_now * shape.expert_bytes_per_gpu)
    policy = PLACEMENTS.build(scenario.placement.kind, **_placement_kwargs(scenario, n_nodes))
    return policy.place(load, n_gpus=dep.ep, slots_per_gpu=slots_per_rank(scenario, m.moe.n_routed_experts),
                        bandwidth=bandwidth, transitions=transitions, hbm_free_bytes=hbm_free,
                        expert_bytes=shape.expert_bytes_per_gpu)


def build_balancer(scenario: Scenario) -> BalancePolicy | None:
    """The configured balancer (None for plain EP with an even split over replicas)."""
    b = scenario.balance
    if b.kind == "none":
        return None
    kwargs: dict[str, Any] = {
        "capacity": {"capacity_factor": b.capacity_factor},
        "llep": {"alpha": b.alpha, "min_tokens": b.min_tokens, "threshold": b.threshold},
        "replica_select": {"strategy": b.strategy},
    }[b.kind]
    return BALANCERS.build(b.kind, **kwargs)


def build_moe_runtime(scenario: Scenario, d: Deployment, gpus: tuple[int, ...],
                      routing: RoutingModel) -> MoeRuntime:
    """Placement planned from the routing model's expected loads (or uniform), plus the balancer."""
    m = d.model
    assert m.moe is not None
    tokens = scenario.scheduler.max_batched_tokens
    if scenario.placement.plan_from == "expected" and hasattr(routing, "expected_counts"):
        load = routing.expected_counts(tokens)
    else:
        load = np.full((m.n_moe_layers, m.moe.n_routed_experts), tokens * m.moe.top_k / m.moe.n_routed_experts)
    transitions = getattr(routing, "transitions", None)     # per-slot probabilities e -> e' [L-1, E, E]
    if transitions is not None:
        transitions = load[:-1, :, None] * transitions          # tokens e -> e', the policy's contract
    placement = plan_placement(scenario, d, gpus, load, transitions=transitions)
    return MoeRuntime(routing=routing, placement=placement, balancer=build_balancer(scenario),
                      shape=moe_shape(d, scenario, gpus), cost=d.cost, collectives=d.collectives,
                      samples=scenario.routing.samples_per_shape,
                      contiguous=scenario.placement.kind == "contiguous",
                      act_limit_bytes=d.gpu.hbm_bytes - d.budget.weight_bytes - d.budget.kv_bytes)

"""Scenario sections for expert placement and runtime load balancing (issue 4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moesim.config.schema import Frozen, Seconds

__all__ = ["BalanceCfg", "PlacementCfg"]


class PlacementCfg(Frozen):
    """Which GPU slot holds each (layer, expert); see docs/scenarios.md and POLICIES.md A1/A2."""

    kind: Literal["contiguous", "round_robin", "eplb", "ilp"] = "contiguous"
    redundant_experts: int = Field(0, ge=0)
    """Extra physical expert slots per layer (EPLB / ILP replicas of hot experts); the total
    E + redundant_experts must be a multiple of deployment.ep."""
    groups: int = Field(1, gt=0)
    """EPLB expert groups G (hierarchical packing when G is a multiple of the nodes spanned)."""
    time_limit_s: Seconds = 10.0
    """ILP solver time limit per stage."""
    plan_from: Literal["expected", "uniform"] = "expected"
    """Initial plan: from the routing model's expected loads (a profiling run), or uniform."""
    replan_interval_s: Seconds | None = None
    """Re-plan every this many simulated seconds from an EMA of observed loads (None: static)."""
    ema_decay: float = Field(0.5, ge=0, lt=1)
    """Weight of the previous estimate in the per-replan EMA of observed loads."""
    replan_delay_s: Seconds = 0.0
    """Staleness: a plan computed at t goes into force at t + delay (stats age meanwhile)."""
    replan_interval_steps: int | None = Field(None, gt=0)
    """Training: re-plan every this many steps from an EMA (``ema_decay``) of the steps' expert
    loads; the weight migration is charged to the step that ends the interval (None: static).
    Inference uses ``replan_interval_s`` instead."""

    @model_validator(mode="after")
    def _kinds(self) -> PlacementCfg:
        if self.redundant_experts and self.kind in ("contiguous", "round_robin"):
            raise ValueError(f"redundant_experts needs kind eplb or ilp (kind={self.kind} places no replicas)")
        return self


class BalanceCfg(Frozen):
    """Per-pass runtime balancing of expert tokens (POLICIES.md B1 and capacity dropping)."""

    kind: Literal["none", "capacity", "llep", "replica_select"] = "none"
    capacity_factor: float = Field(1.25, gt=0)
    """kind=capacity: per-expert capacity = ceil(factor * tokens * top_k / experts)."""
    alpha: float = Field(1.0, gt=0)
    """kind=llep: per-GPU capacity factor over the mean load."""
    min_tokens: int = Field(1024, ge=1)
    """kind=llep: smallest spilled chunk worth a GEMM (m)."""
    threshold: float | None = Field(1.3, ge=1)
    """kind=llep: run plain EP while the GPU imbalance ratio is below this (None: always LLEP)."""
    strategy: Literal["uniform", "round_robin", "least_loaded"] = "uniform"
    """kind=replica_select: how tokens of a replicated expert spread over its replicas."""

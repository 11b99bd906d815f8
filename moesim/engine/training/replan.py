"""Expert placement re-planned during training (EPLB-style rebalancing every N steps).

After every step the per-layer expert shares of the step's routing draws are folded into an EMA
(``placement.ema_decay``, as the inference re-planner does with loads over time). Every
``placement.replan_interval_steps`` steps the placement policy (``placement.kind``) re-plans
from the EMA and the new placement is in force from the next step. Changing it costs a weight
migration: each stage's EP group copies the expert weights that changed rank
(``engine.replan.migration_bytes`` over that stage's MoE layers), all stages at once; the slowest
group's all-to-all (``collectives.all_to_all_s``) is added to the step that ends the interval
(``step_migration_s`` in its breakdown). Optimizer states move with the weights: the bytes per
expert are the parameters plus their optimizer states on that rank (``bytes_per_param``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from moesim.engine.moe_layer import MoeShape
from moesim.engine.replan import migration_bytes
from moesim.network.collectives import CollectiveCost
from moesim.policies.placement import Placement

__all__ = ["StepMigration", "StepReplanner"]


@dataclass(frozen=True)
class StepMigration:
    """One re-plan: the step it ended, bytes copied (all EP groups of the simulated bundle) and the
    seconds it added to that step."""

    step: int
    bytes: float
    seconds: float


class StepReplanner:
    """Re-plans a training run's placement (see the module doc).

    Args:
        interval_steps: steps between re-plans; ema_decay: weight of the previous EMA.
        planner: placement policy, ``[L, E]`` load shares -> ``Placement``.
        stages: per group of stages, (the ``MoeShape`` on its EP group, its MoE layer indices).
        collectives: the all-to-all cost model; state_factor: bytes moved per expert weight byte
            (1 + optimizer and master-weight bytes per weight byte on the rank).
    """

    def __init__(self, *, interval_steps: int, ema_decay: float, planner: Callable[[np.ndarray], Placement],
                 stages: list[tuple[MoeShape, np.ndarray]], collectives: CollectiveCost, state_factor: float) -> None:
        self.interval, self.decay, self.planner = int(interval_steps), float(ema_decay), planner
        self.stages, self.coll, self.state_factor = stages, collectives, float(state_factor)
        self.ema: np.ndarray | None = None
        self.migrations: list[StepMigration] = []

    def after_step(self, step: int, expert_load: np.ndarray, placement: Placement) -> tuple[Placement, float]:
        """Fold step ``step``'s ``[L, E]`` loads in; on an interval's last step return the new
        placement and the migration seconds to add to this step, else ``(placement, 0.0)``."""
        load = np.asarray(expert_load, dtype=np.float64)
        share = load / np.maximum(load.sum(axis=1, keepdims=True), 1.0)
        self.ema = share if self.ema is None else self.decay * self.ema + (1.0 - self.decay) * share
        if (step + 1) % self.interval:
            return placement, 0.0
        new = self.planner(self.ema)
        total, seconds = 0.0, 0.0
        for shape, layers in self.stages:
            old_l = Placement.from_phy2log(placement.phy2log[layers], n_experts=placement.n_experts,
                                           n_gpus=placement.n_gpus)
            new_l = Placement.from_phy2log(new.phy2log[layers], n_experts=new.n_experts, n_gpus=new.n_gpus)
            moved = replace(shape, expert_bytes_per_gpu=shape.expert_bytes_per_gpu * self.state_factor)
            pairs = migration_bytes(old_l, new_l, moved)
            if pairs.any():
                total += float(pairs.sum())
                seconds = max(seconds, float(self.coll.all_to_all_s(shape.gpus, pairs)))
        self.migrations.append(StepMigration(step, total, seconds))
        return new, seconds

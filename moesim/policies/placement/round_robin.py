"""Round-robin placement: expert ``e`` on GPU ``e mod P`` (slot ``e // P`` of that GPU)."""

from __future__ import annotations

import numpy as np

from moesim.policies.placement.base import PLACEMENTS, Placement, check_hbm, check_inputs

__all__ = ["RoundRobin"]


@PLACEMENTS.register("round_robin")
class RoundRobin:
    """No replicas, ignores load; spreads neighbouring expert ids (often co-popular) apart.

    ``E`` need not divide by ``P``: GPUs ``E mod P …`` get one expert fewer, and unused slots
    stay empty (-1).
    """

    def place(self, load: np.ndarray, *, n_gpus: int, slots_per_gpu: int,
              bandwidth: np.ndarray | None = None, transitions: np.ndarray | None = None,
              hbm_free_bytes: np.ndarray | None = None, expert_bytes: float = 0.0,
              rng: np.random.Generator | None = None) -> Placement:
        """See :class:`~moesim.policies.placement.base.PlacementPolicy`."""
        arr = check_inputs(load, n_gpus, slots_per_gpu)
        n_layers, n_experts = arr.shape
        experts = np.arange(n_experts)
        row = np.full(n_gpus * slots_per_gpu, -1, dtype=np.int64)
        row[(experts % n_gpus) * slots_per_gpu + experts // n_gpus] = experts
        placement = Placement.from_phy2log(np.tile(row, (n_layers, 1)), n_experts=n_experts,
                                           n_gpus=n_gpus)
        check_hbm(placement, expert_bytes=expert_bytes, hbm_free_bytes=hbm_free_bytes,
                  policy="round_robin")
        return placement

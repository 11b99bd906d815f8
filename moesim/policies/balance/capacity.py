"""Capacity-factor token dropping (GShard / Switch style), with the drops counted.

Per layer, every expert accepts at most ``capacity = ceil(cf * T*k / E)`` (token, slot) pairs,
where ``T*k`` is the layer's routed pairs this pass (``counts[l].sum()``); the overflow is
dropped (the token skips that expert: its residual passes through) and reported. Kept tokens
split evenly over the expert's replicas. Nothing is dropped when capacity >= the largest load.
"""

from __future__ import annotations

import numpy as np

from moesim.core.errors import ConfigError
from moesim.policies.balance.base import (
    BALANCERS, BalanceDecision, check_counts, split_over_replicas)
from moesim.policies.placement.base import Placement

__all__ = ["CapacityFactor", "expert_capacity"]


def expert_capacity(counts: np.ndarray, capacity_factor: float) -> np.ndarray:
    """``int64[L]`` per-expert capacity ``ceil(cf * sum_e counts[l, e] / E)``.

    A 1e-9 slack keeps float noise (``1.1 * 100 = 110.00000000000001``) from adding a token.
    """
    n_experts = counts.shape[1]
    return np.ceil(capacity_factor * counts.sum(axis=1) / n_experts - 1e-9).astype(np.int64)


@BALANCERS.register("capacity")
class CapacityFactor:
    """Drop each expert's tokens beyond its capacity.

    Args:
        capacity_factor: ``cf`` > 0; 1.0 = exactly the balanced share, 1.25 is GShard's default.
    """

    def __init__(self, *, capacity_factor: float = 1.25) -> None:
        if not capacity_factor > 0:
            raise ConfigError(f"capacity_factor={capacity_factor} must be > 0",
                              field="balance.capacity_factor")
        self.capacity_factor = float(capacity_factor)

    def balance(self, counts: np.ndarray, placement: Placement, *,
                src_tokens: np.ndarray | None = None) -> BalanceDecision:
        """See :class:`~moesim.policies.balance.base.BalancePolicy`."""
        arr = check_counts(counts, placement)
        kept = np.minimum(arr, expert_capacity(arr, self.capacity_factor)[:, None])
        return BalanceDecision.from_chunks(split_over_replicas(kept, placement),
                                           n_layers=placement.n_layers, n_gpus=placement.n_gpus,
                                           dropped=(arr - kept).sum(axis=1))

"""No runtime balancing: every expert's tokens go to its placement replicas, split evenly."""

from __future__ import annotations

import numpy as np

from moesim.policies.balance.base import (
    BALANCERS, BalanceDecision, check_counts, split_over_replicas)
from moesim.policies.placement.base import Placement

__all__ = ["NoBalance"]


@BALANCERS.register("none")
class NoBalance:
    """Plain EP: nothing dropped, nothing moved; replicas share an expert's tokens evenly
    (the first ``count mod replicas`` replicas in slot order take one extra token)."""

    def balance(self, counts: np.ndarray, placement: Placement, *,
                src_tokens: np.ndarray | None = None) -> BalanceDecision:
        """See :class:`~moesim.policies.balance.base.BalancePolicy`."""
        arr = check_counts(counts, placement)
        return BalanceDecision.from_chunks(split_over_replicas(arr, placement),
                                           n_layers=placement.n_layers, n_gpus=placement.n_gpus)

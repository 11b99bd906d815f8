"""Replica selection among EPLB replicas: how an expert's tokens spread over its copies.

Strategies (``strategy``):

``uniform``
    Even split; the ``count mod replicas`` extra tokens go to the lowest slots (= ``none``).
``round_robin``
    Token ``i`` of expert ``e`` goes to replica ``(cursor + i) mod replicas``; the cursor per
    (layer, expert) carries over between passes, so the extra tokens rotate over the replicas.
``least_loaded``
    Per layer, single-copy experts are fixed first; then replicated experts, in descending
    count (ties: lower id), water-fill their tokens onto the least-loaded of their GPUs
    (integer levels; leftover tokens to the lower GPU ids at the level).
"""

from __future__ import annotations

import numpy as np

from moesim.core.errors import ConfigError
from moesim.policies.balance.base import (
    BALANCERS, BalanceDecision, check_counts, split_over_replicas)
from moesim.policies.placement.base import Placement

__all__ = ["ReplicaSelect", "water_fill"]

STRATEGIES = ("uniform", "round_robin", "least_loaded")


def water_fill(base: np.ndarray, tokens: int) -> np.ndarray:
    """``int64[n]`` tokens to add to bins with loads ``base int[n]``, minimising the max load.

    The ``k`` lightest bins rise to a common level; ``k`` is the fewest for which that level
    does not pass the next bin. Leftover tokens (``total mod k``) go to the lower bin ids.
    """
    n = base.size
    order = np.argsort(base, kind="stable")
    level_of = base[order].astype(np.int64)
    prefix = np.concatenate([[0], np.cumsum(level_of)])
    k = next(k for k in range(1, n + 1) if k == n or tokens + prefix[k] <= k * level_of[k])
    level, extra = divmod(int(tokens + prefix[k]), k)
    add = np.zeros(n, dtype=np.int64)
    lifted = np.sort(order[:k])
    add[lifted] = level - base[lifted]
    add[lifted[:extra]] += 1
    return add


@BALANCERS.register("replica_select")
class ReplicaSelect:
    """Split each expert's tokens over its replicas by ``strategy`` (no drops, no transfers).

    Args:
        strategy: ``"uniform"``, ``"round_robin"`` or ``"least_loaded"``.
    """

    def __init__(self, *, strategy: str = "uniform") -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy={strategy!r}; known: {', '.join(STRATEGIES)}",
                              field="balance.strategy")
        self.strategy = strategy
        self._cursor: np.ndarray | None = None     # int64[L, E], round_robin only

    def balance(self, counts: np.ndarray, placement: Placement, *,
                src_tokens: np.ndarray | None = None) -> BalanceDecision:
        """See :class:`~moesim.policies.balance.base.BalancePolicy`."""
        arr = check_counts(counts, placement)
        if self.strategy == "least_loaded":
            chunks = self._least_loaded(arr, placement)
        elif self.strategy == "round_robin":
            if self._cursor is None or self._cursor.shape != arr.shape:
                self._cursor = np.zeros(arr.shape, dtype=np.int64)
            self._cursor %= placement.logcnt                  # a re-placement may shrink counts
            chunks = split_over_replicas(arr, placement, offset=self._cursor)
            self._cursor = (self._cursor + arr) % placement.logcnt
        else:
            chunks = split_over_replicas(arr, placement)
        return BalanceDecision.from_chunks(chunks, n_layers=placement.n_layers,
                                           n_gpus=placement.n_gpus)

    @staticmethod
    def _least_loaded(counts: np.ndarray, placement: Placement) -> np.ndarray:
        rows = []
        for l in range(placement.n_layers):
            gpu_load = np.zeros(placement.n_gpus, dtype=np.int64)
            single = np.nonzero(placement.logcnt[l] == 1)[0]
            gpus = placement.log2phy[l, single, 0] // placement.slots_per_gpu
            np.add.at(gpu_load, gpus, counts[l, single])
            rows += [(l, e, g, c) for e, g, c in zip(single, gpus, counts[l, single])]
            multi = np.nonzero(placement.logcnt[l] > 1)[0]
            for e in multi[np.argsort(-counts[l, multi], kind="stable")]:
                hosts = np.unique(placement.expert_gpus(l, int(e)))
                add = water_fill(gpu_load[hosts], int(counts[l, e]))
                gpu_load[hosts] += add
                rows += [(l, int(e), int(g), int(a)) for g, a in zip(hosts, add)]
        return np.array(rows, dtype=np.int64).reshape(-1, 4)

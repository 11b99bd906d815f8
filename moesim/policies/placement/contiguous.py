"""Contiguous (Megatron / vLLM default) placement: expert ``e`` on GPU ``e // (E / P)``."""

from __future__ import annotations

import numpy as np

from moesim.core.errors import InfeasiblePlacement
from moesim.policies.placement.base import PLACEMENTS, Placement, check_hbm, check_inputs

__all__ = ["Contiguous", "contiguous_phy2log"]


def contiguous_phy2log(n_layers: int, n_experts: int, n_gpus: int, slots_per_gpu: int) -> np.ndarray:
    """``int64[L, P*S]``: GPU ``g`` holds experts ``g*M … (g+1)*M - 1`` (``M = E/P``) in its
    first ``M`` slots; its other ``S - M`` slots are empty (-1). Requires ``E % P == 0``."""
    if n_experts % n_gpus:
        raise InfeasiblePlacement(f"contiguous placement needs experts ({n_experts}) divisible by "
                                  f"gpus ({n_gpus}); use round_robin or eplb")
    per_gpu = n_experts // n_gpus
    row = np.full((n_gpus, slots_per_gpu), -1, dtype=np.int64)
    row[:, :per_gpu] = np.arange(n_experts).reshape(n_gpus, per_gpu)
    return np.tile(row.reshape(-1), (n_layers, 1))


@PLACEMENTS.register("contiguous")
class Contiguous:
    """No replicas, ignores load: the standard EP layout every balancer's native GPU refers to."""

    def place(self, load: np.ndarray, *, n_gpus: int, slots_per_gpu: int,
              bandwidth: np.ndarray | None = None, transitions: np.ndarray | None = None,
              hbm_free_bytes: np.ndarray | None = None, expert_bytes: float = 0.0,
              rng: np.random.Generator | None = None) -> Placement:
        """See :class:`~moesim.policies.placement.base.PlacementPolicy`."""
        arr = check_inputs(load, n_gpus, slots_per_gpu)
        phy2log = contiguous_phy2log(arr.shape[0], arr.shape[1], n_gpus, slots_per_gpu)
        placement = Placement.from_phy2log(phy2log, n_experts=arr.shape[1], n_gpus=n_gpus)
        check_hbm(placement, expert_bytes=expert_bytes, hbm_free_bytes=hbm_free_bytes,
                  policy="contiguous")
        return placement

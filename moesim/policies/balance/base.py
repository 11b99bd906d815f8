"""The :class:`BalancePolicy` protocol, its frozen :class:`BalanceDecision` and registry.

A balancer runs once per forward pass (per step in training): it takes this pass's routed
token counts per (layer, expert) and the current :class:`Placement`, and decides which GPU
computes which of each expert's tokens, which tokens are dropped, and which expert weights
must move first. Routing itself (which expert a token picked) never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from moesim.policies.placement.base import Placement
from moesim.policies.registry import Registry

__all__ = ["BALANCERS", "BalanceDecision", "BalancePolicy", "check_counts", "split_over_replicas"]


def _frozen(values: object, name: str, cols: int | None) -> np.ndarray:
    arr = np.array(values, dtype=np.int64, copy=True)
    if cols is not None:
        arr = arr.reshape(-1, cols)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class BalanceDecision:
    """What each GPU computes in each MoE layer of one pass (arrays copied and read-only).

    Attributes:
        gpu_tokens: ``int64[L, P]`` tokens each GPU's expert GEMMs process after balancing.
        dropped: ``int64[L]`` (token, slot) pairs dropped (capacity overflow); 0 elsewhere.
        transfers: ``int64[n, 4]`` rows ``(layer, expert, src_gpu, dst_gpu)``: expert weights
            that must be copied before the layer runs (LLEP spills); empty for the others.
        active_experts: ``int64[L, P]`` expert GEMMs (experts with >= 1 token) per GPU.
        chunks: ``int64[m, 4]`` rows ``(layer, expert, gpu, tokens)``, tokens > 0: the full
            assignment; ``gpu_tokens`` and ``active_experts`` are its sums and counts.

    Invariant (every built-in balancer; tested): per layer
    ``gpu_tokens.sum() + dropped == counts.sum()`` of the input.
    """

    gpu_tokens: np.ndarray
    dropped: np.ndarray
    transfers: np.ndarray
    active_experts: np.ndarray
    chunks: np.ndarray

    def __post_init__(self) -> None:
        for name, cols in (("gpu_tokens", None), ("dropped", None), ("transfers", 4),
                           ("active_experts", None), ("chunks", 4)):
            object.__setattr__(self, name, _frozen(getattr(self, name), name, cols))
        if self.gpu_tokens.ndim != 2 or self.active_experts.shape != self.gpu_tokens.shape \
                or self.dropped.shape != self.gpu_tokens.shape[:1]:
            raise ValueError(f"BalanceDecision shapes disagree: gpu_tokens {self.gpu_tokens.shape}"
                             f", active_experts {self.active_experts.shape}, "
                             f"dropped {self.dropped.shape}")
        if (self.gpu_tokens < 0).any() or (self.dropped < 0).any() or (self.chunks[:, 3] <= 0).any():
            raise ValueError("BalanceDecision: token counts must be non-negative (chunks positive)")

    @classmethod
    def from_chunks(cls, chunks: np.ndarray, *, n_layers: int, n_gpus: int,
                    dropped: np.ndarray | None = None,
                    transfers: np.ndarray | None = None) -> BalanceDecision:
        """Sum ``chunks int[m, 4] (layer, expert, gpu, tokens)`` into a decision (zero-token
        rows are removed; repeated (layer, expert, gpu) rows are merged)."""
        rows = np.asarray(chunks, dtype=np.int64).reshape(-1, 4)
        rows = rows[rows[:, 3] > 0]
        n_experts = int(rows[:, 1].max(initial=-1)) + 1
        key = (rows[:, 0] * max(n_experts, 1) + rows[:, 1]) * n_gpus + rows[:, 2]
        uniq, inv = np.unique(key, return_inverse=True)
        tokens = np.bincount(inv, weights=rows[:, 3], minlength=uniq.size).astype(np.int64)
        gpu = uniq % n_gpus
        layer_expert = uniq // n_gpus
        layer = layer_expert // max(n_experts, 1)
        merged = np.stack([layer, layer_expert % max(n_experts, 1), gpu, tokens], axis=1)
        flat = layer * n_gpus + gpu
        size = n_layers * n_gpus
        gpu_tokens = np.bincount(flat, weights=tokens, minlength=size).astype(np.int64)
        active = np.bincount(flat, minlength=size).astype(np.int64)
        return cls(gpu_tokens=gpu_tokens.reshape(n_layers, n_gpus),
                   dropped=np.zeros(n_layers, np.int64) if dropped is None else dropped,
                   transfers=np.zeros((0, 4), np.int64) if transfers is None else transfers,
                   active_experts=active.reshape(n_layers, n_gpus), chunks=merged)

    @property
    def weight_transfers(self) -> int:
        """Number of expert weight copies this pass needs (rows of ``transfers``)."""
        return int(self.transfers.shape[0])

    def imbalance(self) -> np.ndarray:
        """``float64[L]`` max / mean GPU tokens per layer after balancing (1.0 when idle)."""
        mean = self.gpu_tokens.mean(axis=1)
        return np.where(mean > 0, self.gpu_tokens.max(axis=1) / np.where(mean > 0, mean, 1), 1.0)


class BalancePolicy(Protocol):
    """Assigns this pass's tokens to GPUs (and may drop tokens or move weights)."""

    def balance(self, counts: np.ndarray, placement: Placement, *,
                src_tokens: np.ndarray | None = None) -> BalanceDecision:
        """Decide one pass.

        Args:
            counts: ``int[L, E]`` (token, slot) pairs routed to each expert this pass.
            placement: where expert weights live (replicas included).
            src_tokens: ``int[P]`` tokens each GPU sends into the MoE layer, or None (even).
                The built-in balancers decide from ``counts`` alone; dispatch traffic is the
                engine's business.
        """
        ...


BALANCERS: Registry[BalancePolicy] = Registry("balance")


def check_counts(counts: np.ndarray, placement: Placement) -> np.ndarray:
    """``int64[L, E]`` counts, or ValueError naming the mismatch."""
    arr = np.asarray(counts)
    if arr.shape != placement.logcnt.shape:
        raise ValueError(f"counts shape {arr.shape} != placement [layers, experts] "
                         f"{placement.logcnt.shape}")
    if arr.size and (arr.min() < 0 or not np.array_equal(arr, np.round(arr))):
        raise ValueError("counts must be non-negative integers")
    return arr.astype(np.int64)


def split_over_replicas(counts: np.ndarray, placement: Placement,
                        offset: np.ndarray | None = None) -> np.ndarray:
    """``int64[m, 4]`` chunks (layer, expert, gpu, tokens): each expert's tokens split evenly
    over its replicas; the ``count mod replicas`` extra tokens go to the replicas starting at
    rank ``offset[l, e]`` (0: the lowest slots). Replicas on one GPU merge later."""
    n_layers, n_experts, maxcnt = placement.log2phy.shape
    layer, expert, rank = np.nonzero(placement.log2phy >= 0)
    slot = placement.log2phy[layer, expert, rank]
    cnt = placement.logcnt[layer, expert]
    c = counts[layer, expert]
    start = 0 if offset is None else offset[layer, expert]
    tokens = c // cnt + (((rank - start) % cnt) < (c % cnt))
    return np.stack([layer, expert, slot // placement.slots_per_gpu, tokens], axis=1)

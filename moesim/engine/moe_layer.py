"""Cost of the MoE layers of one pass from per-GPU expert token counts (numpy over layers x ranks).

An MoE layer is synchronous across its EP ranks: dispatch all-to-all, then (if a balancer spills
experts) the weight copies, then each rank's grouped expert GEMMs, then the combine all-to-all.
Its time is ``dispatch + transfers + slowest rank's GEMMs + combine``.

Inputs come either from contiguous placement without balancing (a reshape of the routed counts,
the fast path) or from a balancer's ``BalanceDecision`` over any ``Placement`` (the general path,
``gemm_tokens_from_decision``); both produce the same arrays, so both are costed by one function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.hardware.cost import CostModel
from moesim.network.collectives import CollectiveCost
from moesim.policies.balance.base import BalanceDecision

__all__ = ["MoeLayerCost", "MoeShape", "gemm_tokens_from_decision", "moe_layers_cost", "transfer_bytes"]


@dataclass(frozen=True)
class MoeShape:
    """Shapes and bytes of one MoE layer as a replica runs it."""

    hidden: int
    intermediate_per_gpu: int
    """Expert intermediate size on one GPU (expert_intermediate / expert_tp)."""
    act_bytes: float
    expert_bytes_per_gpu: float
    """Bytes of one expert's weights held by one GPU of its EP rank."""
    expert_tp: int
    gpus: tuple[int, ...]
    """The replica's global GPU ids; EP rank r owns gpus[r*expert_tp:(r+1)*expert_tp]."""


@dataclass(frozen=True)
class MoeLayerCost:
    """Costs of the MoE layers of one pass (leading ``...`` = any batch of samples).

    time_s ``[...]``: all MoE layers of the pass; layer_s ``[..., L]``; gemm_s ``[..., L, P]``;
    comm_s ``[..., L]`` dispatch + combine; transfer_s ``[..., L]`` expert weight copies;
    peak_act_bytes ``[..., P]`` largest per-GPU activation + foreign-weight footprint of a layer.
    """

    time_s: np.ndarray
    layer_s: np.ndarray
    gemm_s: np.ndarray
    comm_s: np.ndarray
    transfer_s: np.ndarray
    peak_act_bytes: np.ndarray


def gemm_tokens_from_decision(decision: BalanceDecision, n_experts: int) -> np.ndarray:
    """``int64[L, P, E]`` tokens each EP rank computes for each expert (native or foreign)."""
    n_layers, n_ranks = decision.gpu_tokens.shape
    out = np.zeros((n_layers, n_ranks, n_experts), np.int64)
    c = decision.chunks
    np.add.at(out, (c[:, 0], c[:, 2], c[:, 1]), c[:, 3])
    return out


def transfer_bytes(decision: BalanceDecision, shape: MoeShape) -> np.ndarray:
    """``float64[L, G, G]`` expert-weight bytes copied between the replica's GPUs per layer."""
    n_layers = decision.gpu_tokens.shape[0]
    g, etp = len(shape.gpus), shape.expert_tp
    out = np.zeros((n_layers, g, g))
    t = decision.transfers
    for k in range(etp):  # each GPU of the source rank sends its shard to its peer in the destination rank
        np.add.at(out, (t[:, 0], t[:, 2] * etp + k, t[:, 3] * etp + k), shape.expert_bytes_per_gpu)
    return out


def _dispatch_bytes(rank_tokens: np.ndarray, shape: MoeShape) -> np.ndarray:
    """``[..., G, G]``: tokens start spread evenly over the replica's G GPUs; each (token, slot)
    goes to every GPU of the EP rank that computes it (expert-TP shards)."""
    g = len(shape.gpus)
    recv = np.repeat(rank_tokens, shape.expert_tp, axis=-1) * (shape.hidden * shape.act_bytes)
    return np.broadcast_to((recv / g)[..., None, :], recv.shape[:-1] + (g, g))


def moe_layers_cost(gemm_tokens: np.ndarray, shape: MoeShape, cost: CostModel, coll: CollectiveCost, *,
                    weight_pairs: np.ndarray | None = None) -> MoeLayerCost:
    """Cost MoE layers from ``gemm_tokens [..., L, P, E']`` (tokens per EP rank per local GEMM).

    ``weight_pairs [..., L, G, G]``: expert-weight bytes copied before the GEMMs (LLEP spills).
    """
    rank_tokens = gemm_tokens.sum(axis=-1)                                           # [..., L, P]
    gemm = cost.grouped_ffn_s(gemm_tokens, shape.hidden, shape.intermediate_per_gpu)  # [..., L, P]
    dispatch = _dispatch_bytes(rank_tokens, shape)
    comm = (np.asarray(coll.all_to_all_s(shape.gpus, dispatch))                         # tokens out
            + np.asarray(coll.all_to_all_s(shape.gpus, np.swapaxes(dispatch, -1, -2))))  # results back
    transfer = np.zeros_like(comm)
    foreign = np.zeros(rank_tokens.shape)
    if weight_pairs is not None and np.any(weight_pairs):
        transfer = np.asarray(coll.all_to_all_s(shape.gpus, weight_pairs))
        recv = weight_pairs.sum(axis=-2)                                                # [..., L, G]
        foreign = recv.reshape(recv.shape[:-1] + (-1, shape.expert_tp)).max(axis=-1)    # [..., L, P]
    layer = comm + transfer + gemm.max(axis=-1)
    d, f = shape.hidden, shape.intermediate_per_gpu
    acts = rank_tokens * (2 * d + 3 * f) * shape.act_bytes                              # in/out + gate, up, act
    return MoeLayerCost(time_s=layer.sum(axis=-1), layer_s=layer, gemm_s=gemm, comm_s=comm,
                        transfer_s=transfer, peak_act_bytes=(acts + foreign).max(axis=-2))

"""Routing samples of a replica, with their MoE-layer costs under the placement and balancer in force.

For a pass of T tokens the replica keeps ``samples`` routing draws (the pool for T), each costed
once; a pass picks one draw by index. Contiguous placement without balancing takes a fast path
(a reshape of the counts); any other placement or balancer runs the balancer per draw. A new
placement (re-planning) empties the pools.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from moesim.engine.traffic import capture_link_bytes
from moesim.engine.moe_layer import (
    MoeShape, gemm_tokens_from_decision, moe_layers_cost, transfer_bytes)
from moesim.hardware.cost import CostModel
from moesim.network.collectives import CollectiveCost
from moesim.policies.balance.base import BalancePolicy
from moesim.policies.placement.base import Placement
from moesim.workload import RoutingModel

__all__ = ["MoePool", "MoeRuntime"]


@dataclass(frozen=True)
class MoePool:
    """Routing draws for one token count and their costs (S draws).

    counts ``[S, L, E]`` routed (token, slot) pairs; rank_load ``[S, L, P]`` tokens each EP rank
    computes after balancing; time_s ``[S]`` all MoE layers of the pass; imbalance ``[S]`` and
    imbalance_routed ``[S]``: mean over layers of max/mean rank load after / before balancing;
    dropped ``[S]`` (token, slot) pairs dropped; moved_bytes ``[S]`` expert weight bytes copied;
    comm_s ``[S]`` dispatch + combine + weight copies; peak_act_bytes ``[S, P]`` largest per-GPU
    MoE activation + foreign-weight footprint of a layer; oom ``[S]`` whether that footprint
    exceeds the HBM left after weights and the KV pool on some GPU.
    """

    counts: np.ndarray
    rank_load: np.ndarray
    time_s: np.ndarray
    imbalance: np.ndarray
    imbalance_routed: np.ndarray
    dropped: np.ndarray
    moved_bytes: np.ndarray
    comm_s: np.ndarray
    peak_act_bytes: np.ndarray
    oom: np.ndarray
    link_bytes: np.ndarray | None = None
    """``[n_links]`` mean bytes per pass on each link (flow network model only)."""
    transient: bool = False
    """A single pass's own draw (non-stationary routing): folded into totals at once, not kept."""


def _imbalance(rank_load: np.ndarray) -> np.ndarray:
    mean = rank_load.mean(axis=-1)
    ratio = np.where(mean > 0, rank_load.max(axis=-1) / np.maximum(mean, 1e-12), 1.0)
    return ratio.mean(axis=-1)


class MoeRuntime:
    """The MoE side of a replica: routing generator, placement in force, balancer, pools."""

    def __init__(self, *, routing: RoutingModel, placement: Placement, balancer: BalancePolicy | None,
                 shape: MoeShape, cost: CostModel, collectives: CollectiveCost, samples: int,
                 contiguous: bool, act_limit_bytes: float = np.inf) -> None:
        """``balancer=None`` is plain EP: tokens split evenly over an expert's replicas.
        ``act_limit_bytes``: HBM per GPU left for MoE activations after weights and the KV pool."""
        self.act_limit_bytes = act_limit_bytes
        self.routing, self.balancer, self.shape = routing, balancer, shape
        self.cost, self.coll, self.samples = cost, collectives, samples
        self._contiguous = contiguous
        self.version = 0
        self._pools: dict[int, MoePool] = {}
        self._use(placement)

    def _use(self, placement: Placement) -> None:
        self.placement = placement
        # slot -> (its replica index among the expert's slots, the expert's replica count), for the even split
        phy = placement.phy2log
        order = np.argsort(phy, axis=1, kind="stable")
        sorted_e = np.take_along_axis(phy, order, axis=1)
        start = np.zeros_like(sorted_e)
        for layer in range(phy.shape[0]):
            first = np.r_[0, np.flatnonzero(np.diff(sorted_e[layer])) + 1]
            start[layer] = np.repeat(first, np.diff(np.r_[first, phy.shape[1]]))
        rank_sorted = np.arange(phy.shape[1])[None, :] - start
        self._slot_rank = np.empty_like(phy)
        np.put_along_axis(self._slot_rank, order, rank_sorted, axis=1)
        self._slot_cnt = np.where(phy >= 0, np.take_along_axis(placement.logcnt, np.maximum(phy, 0), axis=1), 1)

    def use_collectives(self, coll: CollectiveCost) -> None:
        """Cost communication with ``coll`` from now on (drops every cached pool)."""
        self.coll = coll
        self._pools.clear()

    def set_placement(self, placement: Placement) -> None:
        """Put a new placement in force (drops every cached pool)."""
        self._contiguous = False
        self.version += 1
        self._pools.clear()
        self._use(placement)

    def even_split(self, counts: np.ndarray) -> np.ndarray:
        """``int64[..., L, P, S]`` tokens per slot when each expert's tokens split evenly over its
        replicas, the first ``count mod replicas`` (in slot order) taking one more — the same
        assignment as the ``none`` balancer, vectorised over leading draws."""
        phy = self.placement.phy2log
        routed = np.take_along_axis(counts, np.broadcast_to(np.maximum(phy, 0), counts.shape[:-1] + phy.shape[1:]),
                                    axis=-1)
        q, r = np.divmod(routed, self._slot_cnt)
        tokens = np.where(phy >= 0, q + (self._slot_rank < r), 0)
        p = self.placement.n_gpus
        return tokens.reshape(tokens.shape[:-1] + (p, phy.shape[1] // p))

    @property
    def stationary(self) -> bool:
        """Whether routing draws may be pooled (else every pass draws afresh, see ``pool``)."""
        return bool(self.routing.stationary)

    def pool(self, tokens: int) -> MoePool:
        """The pool for ``tokens`` tokens (built on first use). For non-stationary routing every
        call is the next pass's own draw, repeated ``samples`` times so any index selects it."""
        if not self.stationary:
            self._last = dataclasses.replace(self._build(tokens, self.routing.next_pass(tokens)[None]),
                                             transient=True)
            return self._last
        hit = self._pools.get(tokens)
        if hit is None:
            hit = self._pools[tokens] = self._build(tokens, self.routing.sample_many(tokens, self.samples))
        return hit

    def pool_of_pass(self, tokens: int) -> MoePool:
        """The pool the pass just costed used (the same object ``pool`` returned for it)."""
        return self.pool(tokens) if self.stationary else self._last

    def _build(self, tokens: int, counts: np.ndarray) -> MoePool:
        """Cost ``counts [S, L, E]``; a single non-stationary draw is costed once and repeated."""
        pool, links = capture_link_bytes(self.coll, lambda: self._cost(counts))
        if links is not None:
            pool = dataclasses.replace(pool, link_bytes=links / counts.shape[0])
        if counts.shape[0] < self.samples:  # one draw: repeat it so any sample index selects it
            reps = self.samples // counts.shape[0]
            pool = dataclasses.replace(pool, **{
                f.name: np.repeat(getattr(pool, f.name), reps, axis=0)
                for f in dataclasses.fields(pool) if f.name not in ("link_bytes", "transient")})
        return pool

    def _cost(self, counts: np.ndarray) -> MoePool:
        s, n_layers, n_exp = counts.shape
        p = self.placement.n_gpus
        if self.balancer is None:
            gemm = (counts.reshape(s, n_layers, p, n_exp // p) if self._contiguous
                    else self.even_split(counts))
            cost = moe_layers_cost(gemm, self.shape, self.cost, self.coll)
            rank = gemm.sum(axis=-1)
            zero = np.zeros(s)
            imbalance = _imbalance(rank)  # nothing balanced: the routed imbalance is the same
            return MoePool(counts, rank, cost.time_s, imbalance, imbalance, zero.astype(np.int64),
                           zero, cost.comm_s.sum(axis=-1), cost.peak_act_bytes,
                           cost.peak_act_bytes.max(axis=-1) > self.act_limit_bytes)
        decisions = [self.balancer.balance(counts[i], self.placement) for i in range(s)]
        gemm = np.stack([gemm_tokens_from_decision(d, n_exp) for d in decisions])
        moves = sum(d.weight_transfers for d in decisions)
        pairs = np.stack([transfer_bytes(d, self.shape) for d in decisions]) if moves else None
        cost = moe_layers_cost(gemm, self.shape, self.cost, self.coll, weight_pairs=pairs)
        rank = gemm.sum(axis=-1)
        routed = np.stack([self.placement.gpu_load(counts[i]) for i in range(s)])
        per_copy = self.shape.expert_bytes_per_gpu * self.shape.expert_tp
        return MoePool(
            counts, rank, cost.time_s, _imbalance(rank), _imbalance(routed),
            np.array([int(d.dropped.sum()) for d in decisions], np.int64),
            np.array([d.weight_transfers * per_copy for d in decisions], np.float64),
            (cost.comm_s + cost.transfer_s).sum(axis=-1), cost.peak_act_bytes,
            cost.peak_act_bytes.max(axis=-1) > self.act_limit_bytes)



class MoeStats:
    """Per-replica record of what its passes routed and how the MoE layers ran.

    Passes are recorded as uses of pool draws (cheap per pass); totals are materialised on
    demand: expert_load ``[L, E]`` and rank_load ``[L, P]`` (token, slot) pairs, window_load
    ``[L, E]`` since the last ``reset_window``, dropped pairs, expert weight bytes moved. The rank
    load per time bin and OOM passes are kept as they happen.
    """

    def __init__(self, n_layers: int, n_experts: int, n_ranks: int, *, bin_s: float = 1.0) -> None:
        self.bin_s = bin_s
        self.rank_bins = np.zeros((0, n_ranks), np.int64)
        """``[bins, P]`` (token, slot) pairs each EP rank computed per time bin (summed over layers)."""
        self.oom_passes = 0
        self.first_oom_s: float | None = None
        self.peak_act_bytes = 0.0
        self.passes = 0
        self._shape = (n_layers, n_experts, n_ranks)
        # id(pool) -> (pool, uses [S], window uses [S], rank load per draw [S, P] summed over layers,
        #              largest per-GPU activation per draw [S], its maximum, any draw over HBM)
        self._uses: dict[int, tuple[MoePool, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, bool]] = {}
        self._folded = {"counts": 0, "rank_load": 0, "dropped": 0, "moved_bytes": 0.0}
        self._folded_window: np.ndarray | int = 0

    def record(self, pool: MoePool, idx: np.ndarray, start_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add passes starting at ``start_s`` that used draws ``idx`` of ``pool``; returns their
        ``(imbalance, comm_s)``."""
        if pool.transient:  # fold now: keeping one pool per pass would grow without bound
            uses = np.bincount(idx, minlength=pool.time_s.size)
            for field in self._folded:
                self._folded[field] = self._folded[field] + np.tensordot(uses, getattr(pool, field), axes=1)
            self._folded_window = self._folded_window + np.tensordot(uses, pool.counts, axes=1)
        entry = self._uses.get(id(pool))
        if entry is None:
            n = pool.time_s.size
            peak = pool.peak_act_bytes.max(axis=-1) if pool.peak_act_bytes.size else np.zeros(n)
            entry = (pool, np.zeros(n, np.int64), np.zeros(n, np.int64), pool.rank_load.sum(axis=1), peak,
                     float(peak.max()), bool(pool.oom.any()))
            if not pool.transient:
                self._uses[id(pool)] = entry
        _, uses, window, rank_per_draw, peak_per_draw, pool_peak, any_oom = entry
        one = int(idx[0]) if idx.size == 1 else -1
        if not pool.transient:
            if one >= 0:
                uses[one] += 1
                window[one] += 1
            else:
                counts = np.bincount(idx, minlength=uses.size)
                uses += counts
                window += counts
        last = int(start_s[-1] // self.bin_s)
        if last >= self.rank_bins.shape[0]:
            grow = np.zeros((last + 65 - self.rank_bins.shape[0], self.rank_bins.shape[1]), np.int64)
            self.rank_bins = np.concatenate([self.rank_bins, grow])
        if one >= 0:
            self.rank_bins[last] += rank_per_draw[one]
        else:
            np.add.at(self.rank_bins, (start_s // self.bin_s).astype(np.int64), rank_per_draw[idx])
        if any_oom:
            oom = pool.oom[idx]
            if oom.any():
                self.oom_passes += int(oom.sum())
                if self.first_oom_s is None:
                    self.first_oom_s = float(start_s[np.argmax(oom)])
        if pool_peak > self.peak_act_bytes:  # else no draw of this pool can raise the peak
            peak = float(peak_per_draw[one]) if one >= 0 else float(peak_per_draw[idx].max())
            if peak > self.peak_act_bytes:
                self.peak_act_bytes = peak
        self.passes += int(idx.size)
        return pool.imbalance[idx], pool.comm_s[idx]

    def _total(self, field: str, shape: tuple[int, ...], folded: np.ndarray | float, *,
               window: bool = False) -> np.ndarray:
        """``folded`` plus, over the kept pools, their draws' ``field`` weighted by the draws' uses."""
        if field == "moved_bytes":  # float: summed as always (tensordot, pool by pool)
            out = np.zeros(shape, np.float64) + folded
            for pool, uses, window_uses, *_ in self._uses.values():
                out = out + np.tensordot(window_uses if window else uses, getattr(pool, field), axes=1)
            return out
        out = np.zeros(shape, np.int64)  # integers: exact in any order, a matmul per pool
        out += folded
        flat = out.reshape(-1)
        for pool, uses, window_uses, *_ in self._uses.values():
            w = window_uses if window else uses
            flat += w @ getattr(pool, field).reshape(w.size, -1)
        return out

    @property
    def expert_load(self) -> np.ndarray:
        return self._total("counts", self._shape[:2], self._folded["counts"])

    @property
    def window_load(self) -> np.ndarray:
        return self._total("counts", self._shape[:2], self._folded_window, window=True)

    def reset_window(self) -> None:
        """Start a new observation window (after a re-plan)."""
        for entry in self._uses.values():
            entry[2][:] = 0
        self._folded_window = 0

    @property
    def rank_load(self) -> np.ndarray:
        return self._total("rank_load", (self._shape[0], self._shape[2]), self._folded["rank_load"])

    @property
    def dropped(self) -> int:
        return int(self._total("dropped", (), self._folded["dropped"]))

    @property
    def moved_bytes(self) -> float:
        return float(self._total("moved_bytes", (), self._folded["moved_bytes"]))

"""Forward-pass time of one replica, computed (not simulated) with numpy over layers x ranks.

A pass is: for every layer, attention (projections, core, TP all-reduces) on each attention-DP
group, then either a dense FFN or an MoE block (router, dispatch all-to-all, grouped expert GEMMs
per EP rank, combine all-to-all, shared experts), plus the LM head and a fixed host overhead.
EP is synchronous, so an MoE layer costs its slowest rank; DP groups run in parallel, so the
attention side costs its slowest group (taken over the whole pass, see ``pass_times``).

Costs that depend only on a token count are cached; the routed-expert part is cached per
(token count, routing sample) — see ``MoePool``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moesim.config.schema import DeploymentCfg
from moesim.hardware.cost import CostModel
from moesim.network.collectives import CollectiveCost
from moesim.spec.model import ModelShape
from moesim.workload.routing_load import RoutingLoadGenerator

__all__ = ["GroupBatch", "MoePool", "PassCostModel"]


@dataclass(frozen=True)
class MoePool:
    """Routing samples for one token count and their costs.

    counts: ``[S, moe_layers, experts]`` (token, slot) pairs; rank_load: ``[S, moe_layers, ep]``;
    time_s: ``[S]`` routed-expert time of the whole pass (dispatch + slowest rank + combine);
    imbalance: ``[S]`` mean over layers of max/mean rank load.
    """

    counts: np.ndarray
    rank_load: np.ndarray
    time_s: np.ndarray
    imbalance: np.ndarray


@dataclass
class GroupBatch:
    """What one attention-DP group computes in a pass.

    decode_ctx: ``[n_decode]`` context tokens already cached per decoding sequence;
    prefill_chunk / prefill_prior: ``[n_prefill]`` new prompt tokens this pass and tokens
    already cached before it.
    """

    decode_ctx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prefill_chunk: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prefill_prior: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def tokens(self) -> int:
        return int(self.decode_ctx.size + self.prefill_chunk.sum())

    @property
    def seqs(self) -> int:
        return int(self.decode_ctx.size + self.prefill_chunk.size)


class PassCostModel:
    """Pass time of a replica occupying ``gpus`` (global GPU ids, consecutive)."""

    def __init__(self, *, shape: ModelShape, deployment: DeploymentCfg, cost: CostModel,
                 collectives: CollectiveCost, gpus: tuple[int, ...],
                 routing: RoutingLoadGenerator | None, samples: int) -> None:
        self.shape, self.dep, self.cost, self.coll = shape, deployment, cost, collectives
        self.gpus = gpus
        self.routing = routing
        self.samples = samples
        m = shape.model
        t = deployment.attention_tp
        self.tp_group = gpus[:t]
        self.hidden = m.hidden_size
        self.n_slide, self.window = shape.layer_windows()
        self.n_full = m.n_layers - self.n_slide
        self.kv_bytes_tok_layer = shape.kv_bytes_per_token_per_gpu(t) / m.n_layers
        heads_share = 1.0 / t
        self.fpp_decode = shape.attn_flops_per_pair(decode=True) * heads_share
        self.fpp_prefill = shape.attn_flops_per_pair(decode=False) * heads_share
        self._static: dict[tuple[int, int], float] = {}
        self._moe: dict[int, MoePool] = {}

    # ------------------------------------------------------------------ token-count parts
    def group_static_s(self, tokens: int, seqs: int) -> float:
        """Everything in one DP group's pass except the attention core and routed experts (s)."""
        key = (tokens, seqs)
        hit = self._static.get(key)
        if hit is not None:
            return hit
        sh, m, c, t = self.shape, self.shape.model, self.cost, self.dep.attention_tp
        d, ab = self.hidden, sh.act_bytes_per_elem
        per_layer = (c.gemm_s(tokens, d, sh.attn_params // (d * t))
                     + c.memory_s(4.0 * tokens * d * ab)                       # norms, residuals, rope
                     + 2.0 * self.coll.all_reduce_s(self.tp_group, tokens * d * ab))
        total = m.n_layers * per_layer
        if sh.n_dense_layers:
            total = total + sh.n_dense_layers * c.gemm_s(tokens, d, sh.dense_ffn_params // (d * t))
        if m.moe is not None:
            moe_side = c.gemm_s(tokens, d, m.moe.n_routed_experts)
            if sh.shared_params:
                moe_side = moe_side + c.gemm_s(tokens, d, sh.shared_params // (d * t))
            total = total + m.n_moe_layers * moe_side
        total = total + c.gemm_s(seqs, d, m.vocab_size // t)                   # LM head
        value = float(total)
        self._static[key] = value
        return value

    def moe_pool(self, tokens: int) -> MoePool:
        """Routing samples and routed-expert costs for a pass of ``tokens`` tokens (cached)."""
        pool = self._moe.get(tokens)
        if pool is None:
            pool = self._build_pool(tokens)
            self._moe[tokens] = pool
        return pool

    def _build_pool(self, tokens: int) -> MoePool:
        m, dep = self.shape.model, self.dep
        if m.moe is None or self.routing is None or tokens == 0:
            z = np.zeros(self.samples)
            return MoePool(np.zeros((self.samples, 0, 0), np.int64), np.zeros((self.samples, 0, dep.ep), np.int64),
                           z, np.ones(self.samples))
        counts = self.routing.sample_many(tokens, self.samples)                          # [S, L, E]
        s, n_layers, n_exp = counts.shape
        local = counts.reshape(s, n_layers, dep.ep, n_exp // dep.ep)                     # [S, L, ep, E/ep]
        rank_load = local.sum(axis=-1)                                                  # [S, L, ep]
        expert_s = self.cost.grouped_ffn_s(local, self.hidden, m.moe.expert_intermediate // dep.expert_tp)
        slowest = expert_s.max(axis=-1)                                                 # [S, L]
        a2a = self.coll.all_to_all_s(self.gpus, self._dispatch_bytes(rank_load))        # [S, L]
        time_s = (slowest + 2.0 * a2a).sum(axis=-1)
        mean = rank_load.mean(axis=-1)
        imbalance = np.where(mean > 0, rank_load.max(axis=-1) / np.maximum(mean, 1e-12), 1.0).mean(axis=-1)
        return MoePool(counts, rank_load, time_s, imbalance)

    def _dispatch_bytes(self, rank_load: np.ndarray) -> np.ndarray:
        """``[..., G, G]`` dispatch bytes: tokens start spread evenly over the replica's GPUs and
        each (token, slot) goes to every GPU of its expert's EP rank (expert TP shards)."""
        g, etp = len(self.gpus), self.dep.expert_tp
        recv = np.repeat(rank_load, etp, axis=-1) * (self.hidden * self.shape.act_bytes_per_elem)   # [..., G]
        return np.broadcast_to((recv / g)[..., None, :], recv.shape[:-1] + (g, g))

    # ------------------------------------------------------------------ attention core
    def _decode_core_s(self, ctx: np.ndarray, steps: int) -> np.ndarray:
        """``[steps]`` decode attention of a group whose sequences hold ``ctx`` tokens at step 0."""
        n = ctx.size
        j = np.arange(steps, dtype=np.float64)
        full = float(ctx.sum() + n) + n * j                                  # pairs = kv tokens read
        out = self.n_full * self.cost.attention_s(decode=True, pairs=full, kv_tokens=full,
                                                  flops_per_pair=self.fpp_decode,
                                                  kv_bytes_per_token=self.kv_bytes_tok_layer)
        if self.n_slide:
            slide = np.minimum(ctx[None, :] + 1 + j[:, None], self.window).sum(axis=1)
            out = out + self.n_slide * self.cost.attention_s(decode=True, pairs=slide, kv_tokens=slide,
                                                             flops_per_pair=self.fpp_decode,
                                                             kv_bytes_per_token=self.kv_bytes_tok_layer)
        return out

    def _prefill_core_s(self, chunk: np.ndarray, prior: np.ndarray) -> float:
        """Causal attention of prompt chunks (``chunk`` new tokens after ``prior`` cached ones)."""
        c, p = chunk.astype(np.float64), prior.astype(np.float64)
        pairs = float((c * p + c * (c + 1) / 2).sum())
        kv = float((p + c).sum())
        out = self.n_full * self.cost.attention_s(decode=False, pairs=pairs, kv_tokens=kv,
                                                  flops_per_pair=self.fpp_prefill,
                                                  kv_bytes_per_token=self.kv_bytes_tok_layer)
        if self.n_slide:
            w = float(self.window)
            # sum_{i=1..c} min(p + i, w), per sequence
            full_until = np.clip(w - p, 0, c)
            pairs_s = float((full_until * p + full_until * (full_until + 1) / 2 + (c - full_until) * w).sum())
            kv_s = float(np.minimum(p + c, w).sum())
            out = out + self.n_slide * self.cost.attention_s(decode=False, pairs=pairs_s, kv_tokens=kv_s,
                                                             flops_per_pair=self.fpp_prefill,
                                                             kv_bytes_per_token=self.kv_bytes_tok_layer)
        return float(out)

    # ------------------------------------------------------------------ whole pass
    def pass_times(self, groups: list[GroupBatch], steps: int, sample_idx: np.ndarray) -> np.ndarray:
        """``[steps]`` seconds of consecutive passes.

        With ``steps > 1`` the groups must be decode-only: step j is the same batch with every
        context j tokens longer. ``sample_idx [steps]`` picks the routing sample of each pass.
        Element j equals what ``steps=1`` returns for the batch advanced by j (same arithmetic).
        """
        tokens = 0
        side = np.zeros(steps)
        first = True
        for g in groups:
            if g.seqs == 0:
                continue
            t_g = g.tokens
            tokens += t_g
            cost = self.group_static_s(t_g, g.seqs) + self._decode_core_s(g.decode_ctx, steps)
            if g.prefill_chunk.size:
                cost = cost + self._prefill_core_s(g.prefill_chunk, g.prefill_prior)
            side = cost if first else np.maximum(side, cost)
            first = False
        pool = self.moe_pool(tokens)
        return self.cost.host_overhead_s + side + pool.time_s[sample_idx]

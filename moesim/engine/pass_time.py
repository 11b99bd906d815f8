"""Forward-pass time of one replica, computed (not simulated) with numpy over layers x ranks.

A pass is: for every layer, attention (norm, projections, KV-cache writes, core, output
projection, residual, TP all-reduces) on each attention-DP group, then either a dense FFN or an
MoE block (norm, router GEMM and its softmax / top-k / sort chain, token gather, dispatch
all-to-all, grouped expert GEMMs per EP rank, combine all-to-all, weighting and scatter-add
combine, shared experts, residual), plus the embedding, LM head and the cost model's per-pass host
overhead. Everything but the attention cores and the routed experts is priced kernel by kernel
(``moesim.hardware.layer_ops``: each GEMM and each small kernel its own query, so each pays its
own launch); ``kernels_per_pass`` counts them.
EP is synchronous, so an MoE layer costs its slowest rank; DP groups run in parallel, so the
attention side costs its slowest group (taken over the whole pass, see ``pass_times``).

Costs that depend only on a token count are cached; the routed-expert part is cached per
(token count, routing sample) — see ``MoePool``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from moesim.config.schema import DeploymentCfg
from moesim.hardware.cost import CostModel
from moesim.hardware.layer_ops import (
    GROUPED_EXPERT_KERNELS, Kernels, attention_kernels, dense_ffn_kernels, head_kernels, moe_kernels)
from moesim.network.collectives import CollectiveCost
from moesim.spec.model import ModelShape
from moesim.engine.moe_pool import MoeRuntime
from moesim.engine.traffic import capture_link_bytes

__all__ = ["GroupBatch", "PassCostModel", "PassCosts"]


@dataclass
class GroupBatch:
    """What one attention-DP group computes in a pass.

    decode_ctx: ``[n_decode]`` context tokens already cached per decoding sequence;
    prefill_chunk / prefill_prior: ``[n_prefill]`` new prompt tokens this pass and tokens
    already cached before it. ``tokens`` and ``seqs`` are derived from them (set on creation).
    """

    decode_ctx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prefill_chunk: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prefill_prior: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tokens: int = field(init=False)
    """Tokens computed: one per decoding sequence plus the prompt chunks."""
    seqs: int = field(init=False)
    """Sequences: decoding ones plus prompt chunks."""

    def __post_init__(self) -> None:
        n, c = self.decode_ctx.size, self.prefill_chunk
        self.tokens = int(n + c.sum()) if c.size else int(n)
        self.seqs = int(n + c.size)


class PassCosts(NamedTuple):
    """Costs of ``steps`` consecutive passes of one batch (``PassCostModel.costs``).

    duration_s ``[steps]``; comm_s ``[steps]``: TP all-reduces of the slowest group plus the MoE
    dispatch / combine / weight copies; link_bytes ``[n_links]`` per pass, or None without a flow
    network.
    """

    duration_s: np.ndarray
    comm_s: np.ndarray
    link_bytes: np.ndarray | None


class PassCostModel:
    """Pass time of a replica occupying ``gpus`` (global GPU ids, consecutive)."""

    def __init__(self, *, shape: ModelShape, deployment: DeploymentCfg, cost: CostModel,
                 collectives: CollectiveCost, gpus: tuple[int, ...], moe: MoeRuntime | None) -> None:
        self.shape, self.dep, self.cost, self.coll = shape, deployment, cost, collectives
        self.gpus = gpus
        self.moe = moe
        m = shape.model
        t = deployment.attention_tp
        self.tp_group = gpus[:t]
        self.hidden = m.hidden_size
        self.n_slide, self.window = shape.layer_windows()
        self.n_full = m.n_layers - self.n_slide
        self.mla = m.attention.kind == "mla"
        self.kv_bytes_tok_layer = shape.kv_bytes_per_token_per_gpu(t) / m.n_layers
        heads_share = 1.0 / t
        self.fpp_decode = shape.attn_flops_per_pair(decode=True) * heads_share
        self.fpp_prefill = shape.attn_flops_per_pair(decode=False) * heads_share
        self._static: dict[tuple[int, int], tuple[float, float, np.ndarray | None]] = {}
        self.link_map: np.ndarray | None = None
        """Index of each current network link in the run's first network (None: identical)."""

    # ------------------------------------------------------------------ token-count parts
    def use_collectives(self, coll: CollectiveCost, link_map: np.ndarray | None) -> None:
        """Cost from now on with ``coll`` (a faulted network): every cached cost is dropped."""
        self.coll = coll
        self.link_map = link_map
        self._static.clear()
        if self.moe is not None:
            self.moe.use_collectives(coll)

    def group_static_s(self, tokens: int, seqs: int, decode: int = 0) -> float:
        """Everything in one DP group's pass except the attention core and routed experts (s);
        ``decode`` of the ``tokens`` are decode steps (the rest prompt tokens)."""
        return self._static_entry(tokens, seqs, decode)[0]

    def _static_entry(self, tokens: int, seqs: int, decode: int = 0) -> tuple[float, float, np.ndarray | None]:
        """(seconds, of which TP communication, link bytes [n_links] or None) of a group (cached).
        Only MLA layers run decode tokens differently from prompt tokens: others key on 0."""
        decode = decode if self.mla else 0
        key = (tokens, seqs, decode)
        hit = self._static.get(key)
        if hit is None:
            (total, comm), links = capture_link_bytes(self.coll, lambda: self._static_cost(tokens, seqs, decode))
            hit = self._static[key] = (total, comm, links)
        return hit

    def static_kernels(self, tokens: int, seqs: int, decode: int = 0) -> dict[str, Kernels]:
        """The kernels of a group's pass outside the attention cores and routed experts, per part:
        ``attention`` and ``dense`` / ``moe`` (once per such layer), ``head`` (once per pass)."""
        sh, m, t = self.shape, self.shape.model, self.dep.attention_tp
        ab = sh.act_bytes_per_elem
        out = {"attention": attention_kernels(m, tokens=tokens, decode_tokens=decode, tp=t, act_bytes=ab,
                                              kv_bytes=sh.kv_bytes_per_elem),
               "head": head_kernels(m, tokens=tokens, seqs=seqs, tp=t, act_bytes=ab)}
        if sh.n_dense_layers:
            out["dense"] = dense_ffn_kernels(m, tokens=tokens, tp=t, act_bytes=ab)
        if m.moe is not None:
            out["moe"] = moe_kernels(m, tokens=tokens, tp=t, act_bytes=ab)
        return out

    def kernels_per_pass(self, tokens: int, seqs: int, decode: int = 0) -> int:
        """Kernels one pass of a single group launches: the static ones, one attention core per
        layer and the grouped experts of each MoE layer (``GROUPED_EXPERT_KERNELS``)."""
        m = self.shape.model
        ks = self.static_kernels(tokens, seqs, decode)
        n = m.n_layers * (ks["attention"].count + 1) + ks["head"].count
        n += self.shape.n_dense_layers * ks["dense"].count if "dense" in ks else 0
        n += m.n_moe_layers * (ks["moe"].count + GROUPED_EXPERT_KERNELS) if "moe" in ks else 0
        return n

    def _static_cost(self, tokens: int, seqs: int, decode: int) -> tuple[float, float]:
        sh, m, c = self.shape, self.shape.model, self.cost
        d, ab = self.hidden, sh.act_bytes_per_elem
        # two all-reduces per layer (after attention and after the FFN / MoE block), Megatron style
        comm = m.n_layers * sum(self.coll.all_reduce_s(self.tp_group, tokens * d * ab) for _ in range(2))
        ks = self.static_kernels(tokens, seqs, decode)
        total = m.n_layers * ks["attention"].seconds(c) + ks["head"].seconds(c)
        if "dense" in ks:
            total += sh.n_dense_layers * ks["dense"].seconds(c)
        if "moe" in ks:
            total += m.n_moe_layers * ks["moe"].seconds(c)
        return float(total + comm), float(comm)

    # ------------------------------------------------------------------ attention core
    def _decode_core_s(self, ctx: np.ndarray, steps: int) -> np.ndarray:
        """``[steps]`` decode attention of a group whose sequences hold ``ctx`` tokens at step 0."""
        n = ctx.size                                                         # sequences: constant over the steps
        j = np.arange(steps, dtype=np.float64)
        full = float(ctx.sum() + n) + n * j                                  # pairs = kv tokens read
        out = self.n_full * self.cost.attention_s(decode=True, pairs=full, kv_tokens=full,
                                                  flops_per_pair=self.fpp_decode,
                                                  kv_bytes_per_token=self.kv_bytes_tok_layer, seqs=n)
        if self.n_slide:
            slide = np.minimum(ctx[None, :] + 1 + j[:, None], self.window).sum(axis=1)
            out = out + self.n_slide * self.cost.attention_s(decode=True, pairs=slide, kv_tokens=slide,
                                                             flops_per_pair=self.fpp_decode,
                                                             kv_bytes_per_token=self.kv_bytes_tok_layer, seqs=n)
        return out

    def _prefill_core_s(self, chunk: np.ndarray, prior: np.ndarray) -> float:
        """Causal attention of prompt chunks (``chunk`` new tokens after ``prior`` cached ones)."""
        c, p = chunk.astype(np.float64), prior.astype(np.float64)
        pairs = float((c * p + c * (c + 1) / 2).sum())
        kv = float((p + c).sum())
        n = chunk.size                                                       # prompt chunks
        out = self.n_full * self.cost.attention_s(decode=False, pairs=pairs, kv_tokens=kv,
                                                  flops_per_pair=self.fpp_prefill,
                                                  kv_bytes_per_token=self.kv_bytes_tok_layer, seqs=n)
        if self.n_slide:
            w = float(self.window)
            # sum_{i=1..c} min(p + i, w), per sequence
            full_until = np.clip(w - p, 0, c)
            pairs_s = float((full_until * p + full_until * (full_until + 1) / 2 + (c - full_until) * w).sum())
            kv_s = float(np.minimum(p + c, w).sum())
            out = out + self.n_slide * self.cost.attention_s(decode=False, pairs=pairs_s, kv_tokens=kv_s,
                                                             flops_per_pair=self.fpp_prefill,
                                                             kv_bytes_per_token=self.kv_bytes_tok_layer, seqs=n)
        return float(out)

    # ------------------------------------------------------------------ whole pass
    def pass_times(self, groups: list[GroupBatch], steps: int, sample_idx: np.ndarray) -> np.ndarray:
        """``[steps]`` seconds of consecutive passes (``costs(...).duration_s``)."""
        return self.costs(groups, steps, sample_idx).duration_s

    def costs(self, groups: list[GroupBatch], steps: int, sample_idx: np.ndarray) -> PassCosts:
        """Time and traffic of ``steps`` consecutive passes, each group's caches looked up once.

        With ``steps > 1`` the groups must be decode-only: step j is the same batch with every
        context j tokens longer. ``sample_idx [steps]`` picks the routing sample of each pass.
        Element j equals what ``steps=1`` returns for the batch advanced by j (same arithmetic).
        """
        tokens, tp_comm, links = 0, 0.0, None
        side: np.ndarray | None = None
        for g in groups:
            seqs = g.seqs
            if seqs == 0:
                continue
            t_g = g.tokens
            tokens += t_g
            static, comm, lb = self._static_entry(t_g, seqs, g.decode_ctx.size)
            cost = static + self._decode_core_s(g.decode_ctx, steps)
            if g.prefill_chunk.size:
                cost = cost + self._prefill_core_s(g.prefill_chunk, g.prefill_prior)
            side = cost if side is None else np.maximum(side, cost)
            tp_comm = max(tp_comm, comm)
            if lb is not None:
                links = lb if links is None else links + lb
        if side is None:
            side = np.zeros(steps)
        if self.moe is None or tokens == 0:
            return PassCosts(self.cost.host_overhead_s + side, tp_comm + np.zeros(sample_idx.size), links)
        pool = self.moe.pool(tokens)
        if pool.link_bytes is not None:
            links = pool.link_bytes if links is None else links + pool.link_bytes
        return PassCosts(self.cost.host_overhead_s + side + pool.time_s[sample_idx],
                         tp_comm + pool.comm_s[sample_idx], links)

"""Seconds of the dense (non-routed) part of each pipeline op, from the CostModel and collectives.

Per layer and micro-batch on one GPU (``t`` = the micro-batch's tokens / cp; sequence
parallelism puts ``t / tp`` tokens on a GPU between the TP regions):

* attention: QKV/O projections ``gemm(t, d, attn_params / (d tp))``, the causal core on this
  GPU's share of (query, key) pairs ``pairs / cp`` with ``heads / tp``, two norms and residuals
  ``memory(4 d t/tp)``; TP: one all-gather + reduce-scatter pair (costed as an all-reduce of
  ``t d`` activation bytes) around attention and one around the FFN / shared experts; CP: an
  all-gather of K and V (backward: a reduce-scatter of their gradients);
* dense FFN layers ``gemm(t, d, 3 d f / (d tp))``; MoE layers: router ``gemm(t/tp, d, E)``, shared
  experts, the gate rule's overhead (``GateOverhead``); routed experts are costed from routing
  draws in ``moe_step.py``;
* chunk 0 the embedding, the last chunk the LM head ``gemm(t, d, vocab/tp)`` and the fp32 loss;
  per MTP module (``mtp.py``, on the last chunk; its block is one more layer) another embedding
  lookup and head pass, and the ``2d -> d`` projection ``gemm(t, 2d, d/tp)`` with two RMSNorms.

Backward = 2 x the forward GEMM / memory time, 2.5 x the attention core (FlashAttention's backward
runs 5 matmuls to the forward's 2), the same communication. Recomputation adds the forward time
of what was dropped (``selective``: the listed modules; ``full``: the whole forward, comms
included) to the backward.

Vectorised over bins: ``tokens`` / ``pairs`` ``[R, m]`` (the data ranks of the simulated bundle
x micro-batches) give ``[R, m]`` per-layer times; an op costs its slowest rank (the ranks of an
EP bundle synchronise at every MoE layer), and ``max - mean`` over ranks is *data imbalance*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config.training import TrainingCfg
from moesim.engine.training.layout import ChunkLayout
from moesim.engine.training.mesh import Mesh
from moesim.hardware.cost import CostModel
from moesim.network.collectives import CollectiveCost
from moesim.spec.model import ModelShape

__all__ = ["DenseCosts", "DenseOpModel"]

BWD_GEMM = 2.0
BWD_ATTN_CORE = 2.5


@dataclass(frozen=True)
class DenseCosts:
    """Dense-part op components, each ``[m, C]`` seconds (F = forward op, B = backward op).

    compute_*: the mean over the bundle's data ranks; imbalance_*: slowest rank minus mean;
    tp_*: TP + CP collectives; gate_*: routing-rule overhead (router work, extra all-reduce);
    recompute: forward work redone inside the backward op; wgrad: the weight-gradient GEMMs
    inside ``compute_b`` (one forward's worth of every weighted GEMM: what a split backward's W
    op runs).
    """

    compute_f: np.ndarray
    compute_b: np.ndarray
    imbalance_f: np.ndarray
    imbalance_b: np.ndarray
    tp_f: np.ndarray
    tp_b: np.ndarray
    gate_f: np.ndarray
    gate_b: np.ndarray
    recompute: np.ndarray
    wgrad: np.ndarray


def _mean_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[R, m]`` -> (mean over R, max - mean over R), each ``[m]``."""
    mean = x.mean(axis=0)
    return mean, x.max(axis=0) - mean


class DenseOpModel:
    """Dense-part op costs of the simulated pipeline (module doc).

    Args:
        shape: model sizes; cost: per-GPU operator costs; coll: collectives.
        mesh, layout, cfg: the mesh, the chunk layout and the training section.
        tp_groups / cp_groups / dp_groups: per stage, the simulated bundle's groups.
    """

    def __init__(self, *, shape: ModelShape, cost: CostModel, coll: CollectiveCost, mesh: Mesh,
                 layout: ChunkLayout, cfg: TrainingCfg, tp_groups: list[tuple[int, ...]],
                 cp_groups: list[tuple[int, ...]], dp_groups: list[tuple[int, ...]]) -> None:
        self.sh, self.cost, self.coll, self.mesh, self.lay, self.cfg = shape, cost, coll, mesh, layout, cfg
        m = shape.model
        self.d = m.hidden_size
        self.ab = shape.act_bytes_per_elem
        stage_of = np.arange(layout.chunks) % mesh.pp
        self.tp_g = [tp_groups[s] for s in stage_of]
        self.cp_g = [cp_groups[s] for s in stage_of]
        self.dp_g = [dp_groups[s] for s in stage_of]
        a = m.attention
        tp = mesh.tp
        self.fpp = shape.attn_flops_per_pair(decode=False) / tp
        kv_elems = a.n_heads * (a.head_dim + (a.v_head_dim or a.head_dim)) if a.kind == "mla" \
            else 2 * a.n_kv_heads * a.head_dim
        self.kv_elems = kv_elems / tp
        self.recompute = cfg.recompute
        self.modules = set(cfg.recompute_modules) if cfg.recompute == "selective" else set()

    # ------------------------------------------------------------------ per layer, per bin
    def _layer_parts(self, t: np.ndarray, pairs: np.ndarray) -> dict[str, np.ndarray]:
        """Forward seconds ``[R, m]`` of each part of one layer (per layer type)."""
        c, sh, d, tp = self.cost, self.sh, self.d, self.mesh.tp
        m = sh.model
        parts = {
            "attn_proj": c.gemm_s(t, d, max(sh.attn_params // (d * tp), 1)),
            "core_attn": c.attention_s(decode=False, pairs=pairs / self.mesh.cp, kv_tokens=t,
                                       flops_per_pair=self.fpp, kv_bytes_per_token=self.kv_elems * self.ab),
            "layernorm": c.memory_s(4.0 * d * t / tp * self.ab),
            "mlp": c.gemm_s(t, d, max(sh.dense_ffn_params // (d * tp), 1)) if sh.dense_ffn_params else np.zeros_like(t),
        }
        if m.moe is not None:
            parts["router"] = c.gemm_s(t / tp, d, m.moe.n_routed_experts)
            parts["shared_experts"] = (c.gemm_s(t, d, sh.shared_params // (d * tp)) if sh.shared_params
                                       else np.zeros_like(t))
        return parts

    def _comm(self, chunk: int, t: float) -> tuple[float, float, float]:
        """(TP seconds per collective, CP forward, CP backward) of one layer of ``chunk`` at ``t`` tokens."""
        tp_s = float(self.coll.all_reduce_s(self.tp_g[chunk], t * self.d * self.ab)) if self.mesh.tp > 1 else 0.0
        kv_total = t * self.mesh.cp * self.kv_elems * self.ab
        cp_f = float(self.coll.all_gather_s(self.cp_g[chunk], kv_total)) if self.mesh.cp > 1 else 0.0
        cp_b = float(self.coll.reduce_scatter_s(self.cp_g[chunk], kv_total)) if self.mesh.cp > 1 else 0.0
        return tp_s, cp_f, cp_b

    def costs(self, tokens: np.ndarray, pairs: np.ndarray, *, gate_bytes_per_token: float = 0.0,
              gate_allreduce_bytes: float = 0.0) -> DenseCosts:
        """Dense op components ``[m, C]`` for bins ``tokens`` / ``pairs`` ``[R, m]`` (module doc)."""
        lay, sh, c = self.lay, self.sh, self.cost
        t = tokens / self.mesh.cp
        parts = self._layer_parts(t, pairs)
        zero = np.zeros_like(t)
        attn_f = parts["attn_proj"] + parts["core_attn"] + parts["layernorm"]
        attn_b = BWD_GEMM * (parts["attn_proj"] + parts["layernorm"]) + BWD_ATTN_CORE * parts["core_attn"]
        moe_side = parts.get("router", zero) + parts.get("shared_experts", zero)
        gate_f = c.memory_s(t / self.mesh.tp * gate_bytes_per_token) if gate_bytes_per_token else zero
        embed = c.memory_s(t / self.mesh.tp * self.d * self.ab)
        head_gemm = c.gemm_s(t, self.d, sh.model.vocab_size // self.mesh.tp)
        head = head_gemm + c.memory_s(2.0 * t * sh.model.vocab_size / self.mesh.tp * 4.0)
        mtp_proj = c.gemm_s(t, 2 * self.d, max(self.d // self.mesh.tp, 1))      # MTP: 2d -> d projection
        mtp = mtp_proj + c.memory_s(4.0 * self.d * t / self.mesh.tp * self.ab)  # + its two RMSNorms (mtp.py)
        # per-layer-type [m] means and imbalances (max - mean over data ranks)
        pieces = {name: _mean_max(x) for name, x in {
            "attn_f": attn_f, "attn_b": attn_b, "mlp": parts["mlp"], "moe_side": moe_side, "gate": gate_f,
            "embed": embed, "head": head, "mtp": mtp}.items()}
        wgrad = (_mean_max(parts["attn_proj"])[0][:, None] * lay.layers[None, :]
                 + pieces["mlp"][0][:, None] * lay.dense[None, :] + pieces["moe_side"][0][:, None] * lay.moe[None, :]
                 + _mean_max(head_gemm)[0][:, None] * (lay.head + lay.mtp)[None, :]
                 + _mean_max(mtp_proj)[0][:, None] * lay.mtp[None, :])
        recompute_layer = self._recompute_layer(parts)
        rec_attn, rec_dense, rec_moe = (_mean_max(x)[0] + _mean_max(x)[1] for x in recompute_layer)
        n_layers, n_dense, n_moe = (lay.layers[None, :], lay.dense[None, :], lay.moe[None, :])
        emb, hd = (lay.embed + lay.mtp)[None, :], (lay.head + lay.mtp)[None, :]   # MTP: a lookup and a head each

        def chunked(key: str, idx: int, bwd: float = 1.0) -> np.ndarray:
            v = pieces[key][idx][:, None]
            if key.startswith("attn"):
                return v * n_layers
            if key == "mlp":
                return v * n_dense * bwd
            if key in ("moe_side", "gate"):
                return v * n_moe * bwd
            if key == "mtp":
                return v * lay.mtp[None, :] * bwd
            return v * (emb if key == "embed" else hd) * bwd

        out = {}
        for idx, label in ((0, "compute"), (1, "imbalance")):
            out[f"{label}_f"] = (chunked("attn_f", idx) + chunked("mlp", idx) + chunked("moe_side", idx)
                                 + chunked("embed", idx) + chunked("head", idx) + chunked("mtp", idx))
            out[f"{label}_b"] = (chunked("attn_b", idx) + chunked("mlp", idx, BWD_GEMM)
                                 + chunked("moe_side", idx, BWD_GEMM) + chunked("embed", idx)
                                 + chunked("head", idx, BWD_GEMM) + chunked("mtp", idx, BWD_GEMM))
        gate_f_chunk = chunked("gate", 0) + chunked("gate", 1)
        tp_f, tp_b, gate_ar = self._comm_chunks(float(t.mean()), gate_allreduce_bytes)
        m = tokens.shape[1]
        tp_f, tp_b = np.broadcast_to(tp_f, (m, lay.chunks)), np.broadcast_to(tp_b, (m, lay.chunks))
        gate_comm = np.broadcast_to(gate_ar, (m, lay.chunks))
        recompute = (rec_attn[:, None] * n_layers + rec_dense[:, None] * n_dense + rec_moe[:, None] * n_moe)
        if self.recompute == "full":
            recompute = out["compute_f"] + out["imbalance_f"] + tp_f
        return DenseCosts(compute_f=out["compute_f"], compute_b=out["compute_b"], imbalance_f=out["imbalance_f"],
                          imbalance_b=out["imbalance_b"], tp_f=np.array(tp_f), tp_b=np.array(tp_b),
                          gate_f=gate_f_chunk + gate_comm, gate_b=BWD_GEMM * gate_f_chunk + gate_comm,
                          recompute=recompute, wgrad=wgrad)

    def _recompute_layer(self, parts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forward seconds redone per (attention, dense-FFN, MoE-side) layer by selective recompute."""
        zero = np.zeros_like(parts["layernorm"])
        attn = sum((parts[k] for k in ("core_attn", "layernorm", "attn_proj") if k in self.modules), zero)
        dense = parts["mlp"] if "mlp" in self.modules else zero
        moe = parts.get("shared_experts", zero) if "shared_experts" in self.modules else zero
        return attn, dense, moe

    def _comm_chunks(self, t: float, gate_allreduce_bytes: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``[C]`` TP+CP seconds forward / backward and gate all-reduce seconds per chunk op."""
        lay, sh = self.lay, self.sh
        c_total = lay.chunks
        tp_f, tp_b, gate = np.zeros(c_total), np.zeros(c_total), np.zeros(c_total)
        for c in range(c_total):
            tp_s, cp_f, cp_b = self._comm(c, t)
            n_tp = lay.layers[c] + lay.dense[c] + (lay.moe[c] if sh.shared_params else 0)
            tp_f[c] = n_tp * tp_s + lay.layers[c] * cp_f
            tp_b[c] = n_tp * tp_s + lay.layers[c] * cp_b
            if gate_allreduce_bytes and lay.moe[c]:
                gate[c] = lay.moe[c] * float(self.coll.all_reduce_s(self.dp_g[c], gate_allreduce_bytes))
        return tp_f[None, :], tp_b[None, :], gate[None, :]

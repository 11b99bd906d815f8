"""Per-GPU memory of each pipeline stage: parameters, gradients, optimizer states, activations.

Parameters per GPU (``ParamSplit``): attention, dense FFN, shared experts, router, embedding and LM
head split by TP; routed experts split by EP x expert-TP. A stage holds the chunks the schedule
puts on it (``plan.stage_chunks``: one for 1F1B, ``v`` interleaved, two for DualPipe, whose
stage ``s`` holds model stages ``s`` and ``pp-1-s``: parameters and gradients count twice).
Gradients use ``grad_dtype``; the optimizer keeps an fp32 master copy (``master_weights``) and
two Adam moments (``state_dtype``). ZeRO-1 shards the optimizer state over the group that
reduces the gradients (``dp x cp`` GPUs for dense parameters, ``expert_dp`` for experts; with
DualPipe both copies of a stage: twice as many GPUs), ZeRO-2 the gradients too, ZeRO-3 the
parameters too, plus a *gathered working set* in ``workspace``: the largest unit (a layer, the
embedding or the LM head) gathered for computation and the next one prefetched, in
``param_dtype``, and one unit's unsharded gradients before its reduce-scatter (``zero3.py``).

Activations kept for backward, elements per token of one layer on one GPU (x the activation
dtype; sequence parallelism divides the token-wise ones by tp, CP divides tokens by cp):

* always: the layer input ``d``; MoE layers also the fp32 router probabilities (``2 E``);
* ``layernorm``: the two norm outputs ``2 d``; ``attn_proj``: Q, K, V (and MLA's latents);
  ``core_attn``: the attention output (FlashAttention keeps no ``s x s`` matrix);
* dense FFN (``mlp``): gate, up and activation outputs ``3 f``; shared experts likewise;
* routed experts, per (token, slot) the GPU's EP rank computes: dispatched input ``d``, gate /
  up / activation ``3 f / expert_tp`` (``moe_act`` drops the activation output ``f``; ``moe`` drops
  all but the input), these in ``moe_activation_dtype``, and the expert output ``d``.

``recompute: selective`` drops the listed modules, ``full`` keeps only the layer inputs plus one
layer's working set during its backward. How many micro-batches are alive at once comes from
walking the schedule (1F1B: ``pp - s`` on stage ``s``; interleaved: more on the first stages;
DualPipe: ``pp + 1`` stage-chunks, counting a micro-batch alive until its weight gradient ``W``).
Routed activations follow the routing: the setup check uses balanced loads, every step records
the peak with the hottest rank's load (``oom`` when it exceeds the budget).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config.schema import DTYPE_BYTES, GpuSpec, ModelSpec
from moesim.config.training import OptimizerCfg, TrainingCfg
from moesim.core.errors import ConfigError
from moesim.core.units import GiB
from moesim.engine.training.layout import ChunkLayout
from moesim.engine.training.mesh import Mesh
from moesim.engine.training.schedule import PipelinePlan
from moesim.spec.model import ModelShape

__all__ = ["ActivationModel", "MemoryModel", "ParamSplit", "param_split", "stage_hold", "state_bytes_per_param"]


@dataclass(frozen=True)
class ParamSplit:
    """Parameters one GPU holds per chunk: ``dense [C]`` (TP-sharded) and ``expert [C]`` (EP-sharded)."""

    dense: np.ndarray
    expert: np.ndarray


def param_split(shape: ModelShape, mesh: Mesh, layout: ChunkLayout) -> ParamSplit:
    """Per-GPU parameters of every chunk (module doc)."""
    m = shape.model
    dense = (layout.layers * shape.attn_params + layout.dense * shape.dense_ffn_params
             + layout.moe * (shape.shared_params + shape.router_params)
             + layout.embed * m.vocab_size * m.hidden_size + layout.head * m.vocab_size * m.hidden_size)
    n_exp = m.moe.n_routed_experts if m.moe else 0
    expert = layout.moe * n_exp * shape.expert_params / (mesh.ep * mesh.etp)
    return ParamSplit(dense=dense / mesh.tp, expert=expert.astype(np.float64))


class ActivationModel:
    """Activation bytes per micro-batch of each chunk (module doc)."""

    def __init__(self, shape: ModelShape, mesh: Mesh, layout: ChunkLayout, cfg: TrainingCfg) -> None:
        m = shape.model
        a = m.attention
        d, tp, ab = m.hidden_size, mesh.tp, shape.act_bytes_per_elem
        self.lay, self.ab, self.tp, self.cp = layout, ab, tp, mesh.cp
        full = cfg.recompute == "full"
        drop = set(cfg.recompute_modules) if cfg.recompute == "selective" else set()
        if a.kind == "mla":
            qkv = (a.q_lora_rank or 0) + (a.kv_lora_rank or 0) + (a.qk_rope_head_dim or 0) \
                + a.n_heads * (2 * a.head_dim + (a.v_head_dim or a.head_dim))
            core = a.n_heads * (a.v_head_dim or a.head_dim)
        else:
            qkv, core = a.n_heads * a.head_dim + 2 * a.n_kv_heads * a.head_dim, a.n_heads * a.head_dim
        parts = {"layernorm": 2 * d, "attn_proj": qkv, "core_attn": core}
        self.attn_full = d + sum(parts.values())
        self.attn_kept = d if full else d + sum(v for k, v in parts.items() if k not in drop)
        f_dense = m.dense_intermediate or 0
        self.dense_full = 3 * f_dense
        self.dense_kept = 0 if full or "mlp" in drop else self.dense_full
        moe = m.moe
        f_shared = (moe.shared_intermediate or moe.expert_intermediate) * moe.n_shared_experts if moe else 0
        self.moe_tok_full = (2 * moe.n_routed_experts if moe else 0) + 3 * f_shared
        self.moe_tok_kept = 0 if full else (2 * moe.n_routed_experts if moe else 0) + (
            0 if "shared_experts" in drop else 3 * f_shared)
        f_e = (moe.expert_intermediate / mesh.etp) if moe else 0.0
        cached = DTYPE_BYTES[cfg.moe_activation_dtype] / ab          # in units of activation elements
        self.slot_full = 2 * d + 3 * f_e
        self.slot_kept = 0.0 if full else (d * cached if "moe" in drop else
                                           (d + (2 if "moe_act" in drop else 3) * f_e) * cached + d)
        self.recomputes = cfg.recompute != "none"

    def per_chunk(self, tokens: float, slots_per_layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(kept [C], one-layer working set [C])`` bytes of one micro-batch of ``tokens`` tokens per
        GPU-group (before CP), with ``slots_per_layer [L_moe]`` routed (token, slot) pairs on this GPU's rank."""
        lay = self.lay
        t = tokens / self.cp
        tok = t / self.tp
        cs = np.concatenate([[0.0], np.cumsum(slots_per_layer)])
        slots = cs[lay.moe_stop] - cs[lay.moe_start]
        peak_slots = np.array([slots_per_layer[a:b].max(initial=0.0) for a, b in zip(lay.moe_start, lay.moe_stop)])
        kept = (lay.layers * self.attn_kept * tok + lay.dense * self.dense_kept * t / self.tp
                + lay.moe * self.moe_tok_kept * tok + slots * self.slot_kept) * self.ab
        layer_full = (self.attn_full * tok + np.where(lay.dense > 0, self.dense_full * t / self.tp, 0.0)
                      + np.where(lay.moe > 0, self.moe_tok_full * tok, 0.0) + peak_slots * self.slot_full) * self.ab
        work = layer_full if self.recomputes else np.zeros_like(layer_full)
        return kept, work


def alive_counts(plan: PipelinePlan) -> list[np.ndarray]:
    """Per stage, ``[forward ops, C]``: micro-batches of each chunk alive right after each of the
    stage's forward ops (the candidates for its activation peak). A micro-batch's activations
    are freed by its last backward op through the chunk (B, or W when the backward is split)."""
    release = plan.kinds - 1
    out = []
    for ops in plan.device_ops:
        alive = np.zeros(plan.chunks)
        rows = []
        for me, _, _ in ops:
            c = plan.op_chunk[me]
            if plan.op_kind[me] == 0:
                alive[c] += 1
                rows.append(alive.copy())
            elif plan.op_kind[me] == release:
                alive[c] -= 1
        out.append(np.array(rows) if rows else np.zeros((1, plan.chunks)))
    return out


def expert_redundancy(model: ModelSpec, redundant_experts: int) -> float:
    """Physical expert slots per logical expert, ``(E + redundant) / E`` (1 without MoE): the
    factor ``ParamSplit.expert`` carries on top of the model's logical experts."""
    return 1.0 if model.moe is None else (model.moe.n_routed_experts + redundant_experts) / model.moe.n_routed_experts


def state_bytes_per_param(opt: OptimizerCfg) -> float:
    """Optimizer-state bytes per parameter: the fp32 master copy (``master_weights``) and two Adam
    moments in ``state_dtype``."""
    return (4.0 if opt.master_weights else 0.0) + 2 * DTYPE_BYTES[opt.state_dtype]


def stage_hold(plan: PipelinePlan) -> np.ndarray:
    """``[pp, C]``: 1 where a stage holds a chunk's parameters (``plan.stage_chunks``)."""
    hold = np.zeros((plan.pp, plan.chunks))
    for s, chunks in enumerate(plan.stage_chunks):
        hold[s, list(chunks)] = 1.0
    return hold


def peak_bytes(alive: list[np.ndarray], kept: np.ndarray) -> np.ndarray:
    """``[pp]`` largest sum of alive micro-batches' kept activations per stage (``kept [C]`` bytes)."""
    return np.array([float((a @ kept).max()) for a in alive])


class MemoryModel:
    """Per-stage memory table and the fit check (module doc)."""

    def __init__(self, *, shape: ModelShape, mesh: Mesh, layout: ChunkLayout, plan: PipelinePlan,
                 cfg: TrainingCfg, gpu: GpuSpec, params: ParamSplit,
                 group_sizes: tuple[np.ndarray, np.ndarray] | None = None, gathered: np.ndarray | None = None) -> None:
        """``group_sizes``: per stage, GPUs of its dense / expert gradient-reduction groups (default
        ``dp x cp`` and ``expert_dp``); ``gathered``: ZeRO-3 working set per stage, bytes."""
        opt = cfg.optimizer
        self.mesh, self.plan, self.cfg, self.lay = mesh, plan, cfg, layout
        self.acts = ActivationModel(shape, mesh, layout, cfg)
        self.alive = alive_counts(plan)
        self.capacity = gpu.hbm_bytes * cfg.hbm_utilization - cfg.memory_reserve_bytes
        self.gpu_name = gpu.name
        dp_n, edp_n = group_sizes if group_sizes is not None else (np.full(mesh.pp, mesh.dp * mesh.cp),
                                                                    np.full(mesh.pp, mesh.edp))
        shard_dense = dp_n if opt.zero >= 1 else 1
        shard_expert = edp_n if opt.zero >= 1 else 1
        state_b = state_bytes_per_param(opt)
        grad_b = DTYPE_BYTES[opt.grad_dtype]
        self.hold = stage_hold(plan)
        dense, expert = self.hold @ params.dense, self.hold @ params.expert
        p_shard = (shard_dense, shard_expert) if opt.zero >= 3 else (1, 1)
        self.weights = (dense / p_shard[0] + expert / p_shard[1]) * DTYPE_BYTES[opt.param_dtype]
        g_shard = (shard_dense, shard_expert) if opt.zero >= 2 else (1, 1)
        self.grads = (dense / g_shard[0] + expert / g_shard[1]) * grad_b
        self.optimizer = (dense / shard_dense + expert / shard_expert) * state_b
        self.gathered = np.zeros(mesh.pp) if gathered is None else np.asarray(gathered, dtype=np.float64)

    def activations(self, tokens: float, slots_per_layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``([pp] peak kept activations, [pp] recompute working set)`` bytes."""
        kept, work = self.acts.per_chunk(tokens, slots_per_layer)
        work_stage = np.where(self.hold > 0, work[None, :], 0.0).max(axis=1)
        return peak_bytes(self.alive, kept), work_stage

    def table(self, tokens: float, slots_per_layer: np.ndarray) -> dict[str, np.ndarray]:
        """Per-stage bytes: weights, grads, optimizer, activations, workspace, total; and capacity."""
        acts, work = self.activations(tokens, slots_per_layer)
        work = work + self.gathered
        total = self.weights + self.grads + self.optimizer + acts + work
        return {"stage": np.arange(self.mesh.pp), "weights": self.weights, "grads": self.grads,
                "optimizer": self.optimizer, "activations": acts, "workspace": work, "total": total,
                "capacity": np.full(self.mesh.pp, self.capacity)}

    def check(self, tokens: float, slots_per_layer: np.ndarray) -> dict[str, np.ndarray]:
        """The table with balanced routing; ConfigError naming the fix when a stage does not fit."""
        t = self.table(tokens, slots_per_layer)
        worst = int(np.argmax(t["total"]))
        if t["total"][worst] > self.capacity:
            parts = ", ".join(f"{k} {t[k][worst] / GiB:.1f}" for k in ("weights", "grads", "optimizer", "activations",
                                                                          "workspace"))
            field = "training.recompute" if self.cfg.recompute != "full" else "training.parallel"
            raise ConfigError(
                f"pipeline stage {worst} needs {t['total'][worst] / GiB:.1f} GiB per GPU ({parts} GiB) but "
                f"{self.gpu_name} offers {self.capacity / GiB:.1f} GiB (hbm x hbm_utilization - "
                "memory_reserve_bytes); recompute activations (training.recompute), raise pp / ep / tp, use ZeRO "
                "(training.optimizer.zero, up to 3) or fewer micro_batch_seqs", field=field)
        return t

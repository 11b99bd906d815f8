"""ZeRO-3 (``optimizer.zero: 3``, FSDP-style): parameters sharded over the data-parallel group too.

Units. Parameters are gathered and their gradients reduced per *unit*: one transformer layer
(dense part over the ``dp x cp`` group, routed experts over the ``expert_dp`` group), the
embedding, the LM head. A unit's per-GPU size is what the GPU computes with (TP / EP shards),
``1 / group`` of it is what the GPU keeps between uses.

Communication, per micro-batch through a chunk (as FSDP without ``no_sync``): an all-gather of
every unit's parameters before its forward, another before its backward (the forward's copy was
freed), and a reduce-scatter of its gradients after its backward (after ``W`` when the schedule
splits the backward). Per step and GPU that is ``n x (2 P p + P g)`` bytes on a stage whose chunks
see ``n`` micro-batches (``P`` parameters, ``p`` / ``g`` bytes of ``param_dtype`` / ``grad_dtype``):
three times ZeRO-1's once-per-step parameter all-gather ``P p`` per micro-batch when ``g = p``.
There is no bucketed gradient reduction at the end of the step and no parameter all-gather after
the update (the update runs on the shards).

Exposure, per op, on a communication stream of its own: with ``overlap_param_gather`` the
gathers are prefetched behind the computation (the next unit's during this one's), otherwise each
blocks its unit; with ``overlap_grad_reduce`` the reduce-scatters run behind the backward of the
next units, otherwise each blocks. What overlaps is exposed only beyond the op's own duration:
``exposed = blocking + max(0, overlapped - op_s)`` (shared between gathers and reduce-scatters in
proportion), so exposure vanishes when computation is long.

Memory (``gathered_bytes``): the largest unit gathered and the next one prefetched
(``2 x unit x p``) plus one unit's unsharded gradients (``unit x g``).
"""

from __future__ import annotations

import numpy as np

from moesim.config.schema import DTYPE_BYTES
from moesim.config.training import TrainingCfg
from moesim.engine.training.layout import ChunkLayout
from moesim.engine.training.mesh import Mesh
from moesim.engine.training.schedule import PipelinePlan
from moesim.network.collectives import CollectiveCost
from moesim.spec.model import ModelShape

__all__ = ["Zero3Comm"]


class Zero3Comm:
    """Per-op ZeRO-3 gathers / reduce-scatters, their exposure, bytes and the gathered working set.

    Args:
        shape, mesh, layout, plan, cfg: the model, mesh, chunks, schedule and training section.
        coll: collectives; dp_groups / edp_groups: per stage, the GPUs sharing its dense / expert
            shards (with DualPipe: both copies of the stage).
        expert_redundancy: expert slots / experts (redundant experts are gathered too).
    """

    def __init__(self, *, shape: ModelShape, mesh: Mesh, layout: ChunkLayout, plan: PipelinePlan,
                 cfg: TrainingCfg, coll: CollectiveCost, dp_groups: list[tuple[int, ...]],
                 edp_groups: list[tuple[int, ...]], expert_redundancy: float = 1.0) -> None:
        opt = cfg.optimizer
        self.overlap_gather, self.overlap_reduce = opt.overlap_param_gather, opt.overlap_grad_reduce
        pb, gb = DTYPE_BYTES[opt.param_dtype], DTYPE_BYTES[opt.grad_dtype]
        m = shape.model
        n_exp = m.moe.n_routed_experts if m.moe else 0
        vocab = m.vocab_size * m.hidden_size / mesh.tp
        dense_layer = (shape.attn_params + shape.dense_ffn_params) / mesh.tp
        moe_dense = (shape.attn_params + shape.shared_params + shape.router_params) / mesh.tp
        moe_expert = n_exp * shape.expert_params * expert_redundancy / (mesh.ep * mesh.etp)
        # per chunk: (count, dense params, expert params) of each unit kind
        kinds = [(layout.dense, dense_layer, 0.0), (layout.moe, moe_dense, moe_expert),
                 (layout.embed.astype(float), vocab, 0.0), (layout.head.astype(float), vocab, 0.0)]
        c_total = layout.chunks
        group = plan.home_stage                   # [C] whose dp / expert-dp groups gather and reduce the chunk
        self.gather_s = np.zeros(c_total)         # [C] per op, one direction (forward or backward)
        self.reduce_s = np.zeros(c_total)         # [C] per backward op
        self.unit_max = np.zeros(c_total)         # [C] largest unit, parameters per GPU
        self.params = np.zeros(c_total)           # [C] parameters per GPU, unsharded
        for c in range(c_total):
            dg, eg = dp_groups[group[c]], edp_groups[group[c]]
            for count, dense, expert in kinds:
                n = float(count[c])
                if n <= 0:
                    continue
                self.params[c] += n * (dense + expert)
                self.unit_max[c] = max(self.unit_max[c], dense + expert)
                for nparams, g in ((dense, dg), (expert, eg)):
                    if nparams > 0 and len(g) > 1:
                        self.gather_s[c] += n * float(coll.all_gather_s(g, nparams * pb))
                        self.reduce_s[c] += n * float(coll.reduce_scatter_s(g, nparams * gb))
        hold_mb = np.zeros((plan.pp, c_total))    # forward ops of each chunk on each stage
        for s, ops in enumerate(plan.device_ops):
            for me, _, _ in ops:
                if plan.op_kind[me] == 0:
                    hold_mb[s, plan.op_chunk[me]] += 1
        self.gather_bytes = hold_mb @ (2.0 * self.params * pb)
        """``[pp]`` bytes each GPU all-gathers per step (its gathered output, both passes)."""
        self.reduce_bytes = hold_mb @ (self.params * gb)
        """``[pp]`` bytes each GPU reduce-scatters per step (its input)."""
        held = hold_mb > 0
        self.gathered_bytes = np.where(held, self.unit_max[None, :], 0.0).max(axis=1) * (2.0 * pb + gb)
        """``[pp]`` working set of gathered parameters and unsharded gradients (module doc)."""

    def exposure(self, op_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(gather, reduce)`` exposed seconds ``[K, m, C]`` for ops lasting ``op_s [K, m, C]``
        without them (module doc). The reduce-scatter goes with the last backward op (B or W)."""
        k = op_s.shape[0]
        z = np.zeros(op_s.shape[1:])
        ag = np.broadcast_to(self.gather_s, z.shape)
        rs = np.broadcast_to(self.reduce_s, z.shape)
        gathers = [ag, ag] + ([z] if k == 3 else [])
        reduces = [z, rs] if k == 2 else [z, z, rs]
        out_g, out_r = np.zeros(op_s.shape), np.zeros(op_s.shape)
        for i in range(k):
            g, r = gathers[i], reduces[i]
            ov_g = g if self.overlap_gather else z
            ov_r = r if self.overlap_reduce else z
            ov = ov_g + ov_r
            spill = np.maximum(ov - op_s[i], 0.0)
            frac = np.divide(ov_g, ov, out=np.zeros_like(ov), where=ov > 0)
            out_g[i] = (g - ov_g) + spill * frac
            out_r[i] = (r - ov_r) + spill * (1.0 - frac)
        return out_g, out_r

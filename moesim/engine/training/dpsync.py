"""Data-parallel gradient synchronisation overlapped with backward, the optimizer step, ZeRO gathers.

Gradients are reduced in buckets of ``optimizer.bucket_params`` parameters, dense parameters over
the ``dp x cp`` group, expert parameters over the ``expert_dp`` group (with DualPipe, whose every
stage lives on two ranks, over both copies' groups: twice as many GPUs): all-reduce without
ZeRO, reduce-scatter with ZeRO-1/2. A chunk's gradients on a stage are complete only during the
last backward op through it there (``plan.grad_ops``: the last B, or W when the backward is
split); its buckets become ready evenly through that op (layer by layer, in backward order) and
start at once when ``overlap_grad_reduce`` is on, otherwise all wait for the stage's last op.
Each stage has one communication stream: buckets run one at a time, in the order they become
ready. The step ends when every stage's compute and gradient reduction are done; then every GPU
updates its shard of the optimizer state (a streaming kernel over master weights, moments,
gradients and parameters) and, with ZeRO-1/2, the updated parameters are all-gathered (exposed
unless ``overlap_param_gather`` hides them behind the next forward). ZeRO-3 reduces and gathers
inside the ops instead (``zero3.py``): no buckets, no gather after the update.

``bytes_per_step`` ``[pp]``: what each GPU hands to these collectives per step (gradients in,
gathered parameters out), ZeRO-0..2; ZeRO-3's are ``Zero3Comm.gather_bytes + reduce_bytes``.

**Sharing the NICs with the EP all-to-all.** A bucket that becomes ready during a backward op
whose dispatch / combine all-to-all crosses hosts runs while that all-to-all holds the NICs for a
share ``u`` of the op (its inter-host all-to-all seconds over the op's duration, ``ep_nic_share``).
When the bucket's own group crosses hosts it gets the rest of the NIC time, and at least half of
it (max-min fairness between two flows on one link): its time is divided by ``max(1 - u, 1/2)``.
The all-to-all is not slowed in turn (its ops are already placed when the buckets are costed);
PP sends are small and not counted.

**Embedding copy.** Where the last stage keeps a copy of the word embedding (tied head, or MTP's
lookup, ``mtp.embedding_copy``), its gradient is all-reduced between the first and the last stage
(one pair of GPUs per data-parallel and tensor rank, ``vocab x d / tp`` gradients) once both have
finished their data-parallel reduction, as Megatron's ``finalize_model_grads`` does; both stages
end with it.
"""

from __future__ import annotations

import math

import numpy as np

from moesim.config.schema import DTYPE_BYTES
from moesim.config.training import TrainingCfg
from moesim.engine.training.memory import ParamSplit, stage_hold
from moesim.engine.training.mesh import Mesh
from moesim.engine.training.pipeline import PipelineRun
from moesim.engine.training.schedule import PipelinePlan
from moesim.hardware.cost import CostModel
from moesim.network.collectives import CollectiveCost

__all__ = ["GradSync"]


class GradSync:
    """Bucketed gradient reduction, optimizer step and parameter gather of the simulated pipeline.

    ``dp_groups`` / ``edp_groups``: per stage, the GPUs its dense / expert gradients reduce over;
    ``node_of``: host of every GPU (a group spanning hosts shares the NICs, module doc);
    ``embed_pair``: the first-stage and last-stage GPU whose embedding copies are all-reduced, and
    ``embed_params`` the copy's parameters per GPU (module doc); None / 0 without a copy.
    """

    def __init__(self, *, params: ParamSplit, mesh: Mesh, plan: PipelinePlan, cfg: TrainingCfg, cost: CostModel,
                 coll: CollectiveCost, dp_groups: list[tuple[int, ...]], edp_groups: list[tuple[int, ...]],
                 node_of: np.ndarray, embed_pair: tuple[int, int] | None = None,
                 embed_params: float = 0.0) -> None:
        opt = cfg.optimizer
        self.plan, self.overlap = plan, opt.overlap_grad_reduce
        grad_b, param_b = DTYPE_BYTES[opt.grad_dtype], DTYPE_BYTES[opt.param_dtype]
        reduce = coll.all_reduce_s if opt.zero == 0 else coll.reduce_scatter_s
        # per chunk: (fraction ready, seconds) of its buckets; the reduction group is that of the
        # first stage holding the chunk (DualPipe's two holders share one)
        self.buckets: list[tuple[np.ndarray, np.ndarray]] = []
        self.crosses: list[np.ndarray] = []
        """Per chunk, whether each bucket's group spans hosts (its traffic uses the NICs)."""
        node = np.asarray(node_of)
        for c in range(plan.chunks):
            s = int(plan.home_stage[c])
            fr, secs, cross = [], [], []
            for n_params, group in ((params.dense[c], dp_groups[s]), (params.expert[c], edp_groups[s])):
                if n_params <= 0 or len(group) < 2 or opt.zero >= 3:
                    continue
                n = max(1, math.ceil(n_params / opt.bucket_params))
                t = float(reduce(group, n_params / n * grad_b))
                fr.extend((k + 1) / n for k in range(n))
                secs.extend([t] * n)
                cross.extend([len(set(node[list(group)].tolist())) > 1] * n)
            order = np.argsort(fr, kind="stable")
            self.buckets.append((np.asarray(fr)[order], np.asarray(secs)[order]))
            self.crosses.append(np.asarray(cross, bool)[order])
        hold = stage_hold(plan)
        dense, expert = hold @ params.dense, hold @ params.expert
        dp_n = np.array([len(g) for g in dp_groups], dtype=np.float64)
        edp_n = np.array([len(g) for g in edp_groups], dtype=np.float64)
        shard_d = dp_n if opt.zero >= 1 else 1.0
        shard_e = edp_n if opt.zero >= 1 else 1.0
        touched = grad_b + param_b + (8.0 if opt.master_weights else 0.0) + 4.0 * DTYPE_BYTES[opt.state_dtype]
        self.optimizer_s = np.asarray(cost.memory_s((dense / shard_d + expert / shard_e) * touched), dtype=np.float64)
        gather = np.zeros(mesh.pp)
        if opt.zero in (1, 2):
            for s in range(mesh.pp):
                if len(dp_groups[s]) > 1:
                    gather[s] += float(coll.all_gather_s(dp_groups[s], dense[s] * param_b))
                if len(edp_groups[s]) > 1:
                    gather[s] += float(coll.all_gather_s(edp_groups[s], expert[s] * param_b))
        self.gather_s = gather
        self.gather_exposed = not opt.overlap_param_gather
        self.param_gather_bytes = (dense + expert) * param_b if opt.zero in (1, 2) else np.zeros(mesh.pp)
        """``[pp]`` ZeRO-1/2 parameter all-gather output per GPU per step, bytes."""
        self.bytes_per_step = (dense + expert) * grad_b + self.param_gather_bytes if opt.zero < 3 \
            else np.zeros(mesh.pp)
        self.embed_stages = (0, 0)
        """The stages of ``embed_pair``'s two GPUs."""
        self.embed_sync_s = 0.0
        """Seconds of the embedding copy's gradient all-reduce (0 without a copy)."""
        if embed_pair is not None and embed_params > 0:
            self.embed_stages = (mesh.locate(embed_pair[0])["stage"], mesh.locate(embed_pair[1])["stage"])
            self.embed_sync_s = float(coll.all_reduce_s(embed_pair, embed_params * grad_b))
            self.bytes_per_step[list(self.embed_stages)] += embed_params * grad_b

    def sync_end(self, run: PipelineRun, ep_nic_s: np.ndarray | None = None) -> np.ndarray:
        """``[pp]`` when each stage's last gradient bucket is reduced (seconds from step start).

        ``ep_nic_s [n_ops]``: seconds each op's all-to-all holds the NICs (module doc); None: none."""
        out = np.array(run.stage_end, dtype=np.float64)
        for s, grad_ops in enumerate(self.plan.grad_ops):
            ready, secs = [], []
            for c, op in grad_ops:
                fr, t = self.buckets[c]
                if not fr.size:
                    continue
                begin, end = run.start[op], run.end[op]
                ready.append(begin + fr * (end - begin) if self.overlap else np.full(fr.size, run.stage_end[s]))
                if self.overlap and ep_nic_s is not None and end > begin:
                    u = min(float(ep_nic_s[op]) / (end - begin), 1.0)
                    t = np.where(self.crosses[c], t / max(1.0 - u, 0.5), t)
                secs.append(t)
            if not ready:
                continue
            r, d = np.concatenate(ready), np.concatenate(secs)
            order = np.argsort(r, kind="stable")
            t = 0.0
            for ri, di in zip(r[order].tolist(), d[order].tolist()):
                t = (ri if ri > t else t) + di
            out[s] = max(out[s], t)
        if self.embed_sync_s:
            first, last = self.embed_stages
            out[first] = out[last] = max(out[first], out[last]) + self.embed_sync_s
        return out

    def post_step_s(self) -> tuple[float, float]:
        """(optimizer seconds, exposed parameter all-gather seconds): the slowest stage's."""
        gather = float(self.gather_s.max()) if self.gather_exposed else 0.0
        return float(self.optimizer_s.max()), gather

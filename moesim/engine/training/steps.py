"""One training step: assemble op durations, run the pipeline DES, sync gradients, split the time.

Op duration = compute + imbalance + TP/CP + EP all-to-all + gate overhead (+ recompute in
backward) + straggler slow-down (+ ZeRO-3's exposed gathers / reduce-scatters). Schedules that
split the backward (DualPipe) give the weight-gradient GEMMs to the W op. In DualPipe's fused
F&B slots the balanced EP all-to-all is the hideable part (``pipeline.py``; what routing skew
adds to it counts as imbalance and stays exposed); elsewhere it is exposed (less
``schedule.ep_comm_overlap``). The step's time is then split into causes by counterfactual
replays of the same schedule (``pipeline.replay``), applied in this order, so the parts add up
exactly to the step time:

* ``straggler_wait`` = step makespan - makespan without straggler slow-downs;
* ``imbalance_wait`` = that - makespan also with perfectly balanced experts and data;
* ``pp_comm`` = that - makespan also with free point-to-point transfers;
* what remains is the ideal pipeline; on its bottleneck stage (the most busy time) it splits into
  the busy components (compute, recompute, tp_comm, ep_comm: the *exposed* all-to-all, gate;
  ZeRO-3's exposed gathers count as ``param_gather``, its exposed reduce-scatters as
  ``dp_exposed``) and ``bubble`` (that stage's idle time: the schedule's fill and drain plus
  waiting for slower stages);
* after the last op: ``dp_exposed`` (gradient reduction not hidden by backward), ``optimizer``,
  ``param_gather`` (ZeRO-1/2 all-gather, when exposed).

The all-to-all a fused slot hid on the bottleneck stage is reported apart (``ep_comm_hidden_s``,
not a part of the step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moesim.engine.training.opcost import DenseCosts
from moesim.engine.training.pipeline import PipelineRun, exposed_hide, replay, simulate
from moesim.engine.training.setup import TrainingSetup
from moesim.policies.gate import GateOverhead
from moesim.workload.training_data import BatchLayout, training_batch

__all__ = ["BREAKDOWN", "StepLoop", "StepOutcome"]

BREAKDOWN = ("compute", "recompute", "tp_comm", "ep_comm", "gate", "bubble", "pp_comm", "imbalance_wait",
             "straggler_wait", "dp_exposed", "optimizer", "param_gather")
"""Step-time components, in report order; they sum to the step time."""
_BUSY = ("compute", "recompute", "tp_comm", "ep_comm", "gate")


@dataclass
class StepOutcome:
    """One simulated step: its time, the breakdown, routing statistics and (maybe) its timeline."""

    step_s: float
    makespan_s: float
    breakdown: dict[str, float]
    stats: dict[str, float]
    events: int
    timeline: list[dict[str, Any]] | None = None
    expert_load: np.ndarray | None = None
    rank_load: np.ndarray | None = None
    max_rank_slots: np.ndarray | None = None
    stage_end: list[float] = field(default_factory=list)


class StepLoop:
    """Runs the steps of a ``TrainingSetup`` one after another (module doc)."""

    def __init__(self, setup: TrainingSetup) -> None:
        self.s = setup
        mesh, plan = setup.mesh, setup.plan
        self.m, self.c, self.k = mesh.micro_batches, setup.layout.chunks, plan.kinds
        self.op_stage = np.asarray(plan.op_stage).reshape(self.k, self.m, self.c)
        self.p2p = np.asarray(setup.p2p, dtype=np.float64).tolist()
        self.has_p2p = bool(np.any(setup.p2p))
        self.zero_p2p = [0.0] * plan.n_ops
        self.data_rng = setup.streams.get("data")
        self.routing_rng = setup.streams.get("routing-steps")
        self._fixed: BatchLayout | None = None
        self._dense_cache: dict[tuple[float, float], DenseCosts] = {}
        self._replays: dict[tuple[bytes, bytes, bool], PipelineRun] = {}
        self.ep_cross = 0.0
        """Share of the EP group's GPU pairs on different hosts: the part of the all-to-all on the NICs."""
        if setup.moe is not None and setup.moe.stage_layers:
            node = np.asarray(setup.topology.node_of)[list(setup.moe.stage_layers[0][0].gpus)]
            n = node.size
            self.ep_cross = float((node[:, None] != node[None, :]).sum()) / max(n * (n - 1), 1)

    # ------------------------------------------------------------------ inputs of a step
    def _batch(self) -> BatchLayout:
        data = self.s.cfg.data
        if data.documents is None:
            if self._fixed is None:
                self._fixed = training_batch(data, ranks=self.s.mesh.bundle_ranks, micro_batches=self.m,
                                             rng=self.data_rng)
            return self._fixed
        return training_batch(data, ranks=self.s.mesh.bundle_ranks, micro_batches=self.m, rng=self.data_rng)

    def _dense(self, batch: BatchLayout, overhead: GateOverhead) -> DenseCosts:
        key = (overhead.router_bytes_per_token, overhead.allreduce_bytes)
        if batch is self._fixed and key in self._dense_cache:
            return self._dense_cache[key]
        out = self.s.dense.costs(batch.tokens, batch.pairs, gate_bytes_per_token=key[0], gate_allreduce_bytes=key[1])
        if batch is self._fixed:
            self._dense_cache[key] = out
        return out

    def _components(self, step: int) -> tuple[dict[str, np.ndarray], dict[str, float], Any]:
        """``{name: [K, m, C]}`` op components of step ``step`` (forward, backward and, for split
        backwards, weight-gradient ops) and its routing stats."""
        s = self.s
        batch = self._batch()
        moe = None
        stats: dict[str, float] = {"documents": float(batch.documents)}
        if s.moe is not None:
            scale = None
            if s.cfg.data.documents is not None and not s.cfg.data.packing:
                scale = batch.tokens.mean(axis=0) / s.micro_batch_tokens
            moe = s.moe.step(step, micro_batches=self.m, rng=self.routing_rng, token_scale=scale)
            stats.update(maxvio_global=moe.maxvio_global, maxvio_micro=moe.maxvio_micro,
                         rank_imbalance=moe.rank_imbalance, dropped_fraction=moe.dropped_fraction, **moe.routing.notes)
        d = self._dense(batch, moe.routing.overhead if moe is not None else GateOverhead())
        z = np.zeros((self.m, self.c))
        comp = {
            "compute": [d.compute_f + (moe.gemm_f if moe else z), d.compute_b + (moe.gemm_b if moe else z)],
            "imbalance": [d.imbalance_f + (moe.imbalance_f if moe else z),
                          d.imbalance_b + (moe.imbalance_b if moe else z)],
            "tp_comm": [d.tp_f, d.tp_b],
            "ep_comm": [moe.ep_f if moe else z, moe.ep_b if moe else z],
            "gate": [d.gate_f, d.gate_b],
            "recompute": [z, d.recompute + (moe.recompute if moe else z)],
        }
        stage = self.op_stage[0]                                   # [m, C]: F, B and W of an op share a stage
        fac_f, fac_b = (np.reshape(f, (self.m, self.c)) for f in s.stragglers.factors(1, stage.ravel()))
        slow = []
        for i, fac in enumerate((fac_f, fac_b)):
            base = comp["compute"][i] + comp["imbalance"][i] + comp["gate"][i] + comp["recompute"][i]
            slow.append(np.maximum(fac - 1.0, 0.0) * base)
        comp["straggler"] = slow
        if self.k == 3:                                            # split backward: W takes the weight GEMMs
            w = np.broadcast_to(d.wgrad + (moe.gemm_f if moe else z), (self.m, self.c))
            slow_w = np.maximum(fac_b - 1.0, 0.0) * w
            for name, parts in comp.items():
                extra = w if name == "compute" else slow_w if name == "straggler" else z
                parts[1] = parts[1] - extra
                parts.append(extra)
        stacked = {k: np.stack([np.broadcast_to(x, (self.m, self.c)) for x in v]) for k, v in comp.items()}
        return stacked, stats, moe

    # ------------------------------------------------------------------ one step
    def step(self, step: int, *, record_timeline: bool = False) -> StepOutcome:
        """Simulate step ``step`` (module doc)."""
        s, plan = self.s, self.s.plan
        comp, stats, moe = self._components(step)
        ideal = sum(comp[k] for k in _BUSY)
        zg = zr = np.zeros_like(ideal)
        if s.zero3 is not None:
            zg, zr = s.zero3.exposure(ideal)
            ideal = ideal + zg + zr
        no_strag = ideal + comp["imbalance"]
        total = no_strag + comp["straggler"]
        hide = comp["ep_comm"] if plan.fused else None
        hide_l = hide.ravel().tolist() if hide is not None else None
        run = simulate(plan, total.ravel().tolist(), self.p2p, hide_l)
        run_b = replay(plan, no_strag.ravel().tolist(), self.p2p, hide_l) if comp["straggler"].any() else run
        run_c = self._replay(ideal, hide, p2p=True) if comp["imbalance"].any() else run_b
        run_c0 = self._replay(ideal, hide, p2p=False) if self.has_p2p else run_c
        ep = comp["ep_comm"] if hide is None else exposed_hide(plan, ideal, hide).reshape(ideal.shape)
        busy_op = ideal - comp["ep_comm"] + ep                     # each op's share of its slot's time
        busy_per_stage = np.bincount(self.op_stage.ravel(), weights=busy_op.ravel(), minlength=s.mesh.pp)
        bottleneck = int(np.argmax(busy_per_stage))                # the bottleneck stage of the ideal pipeline
        on = self.op_stage == bottleneck
        busy = {k: float(comp[k][on].sum()) for k in _BUSY}
        busy["ep_comm"] = float(ep[on].sum())
        stats["ep_comm_hidden_s"] = float(comp["ep_comm"][on].sum()) - busy["ep_comm"]
        sync_end = s.sync.sync_end(run, comp["ep_comm"].ravel() * self.ep_cross if self.ep_cross else None)
        opt_s, gather_s = s.sync.post_step_s()
        end = float(max(np.max(run.stage_end), np.max(sync_end)))
        breakdown = dict(busy)
        breakdown.update(
            bubble=max(run_c0.makespan - float(busy_op[on].sum()), 0.0),
            pp_comm=run_c.makespan - run_c0.makespan, imbalance_wait=run_b.makespan - run_c.makespan,
            straggler_wait=run.makespan - run_b.makespan, dp_exposed=end - run.makespan + float(zr[on].sum()),
            optimizer=opt_s, param_gather=gather_s + float(zg[on].sum()))
        step_s = end + opt_s + gather_s
        if s.replanner is not None and moe is not None:   # re-plan: the weights move before the next step
            placement, breakdown["migration"] = s.replanner.after_step(step, moe.expert_load, s.moe.placement)
            step_s += breakdown["migration"]
            if placement is not s.moe.placement:
                s.moe.set_placement(placement)
        timeline = self._timeline(run, sync_end, opt_s, gather_s) if record_timeline else None
        return StepOutcome(step_s=step_s, makespan_s=run.makespan, breakdown=breakdown, stats=stats,
                           events=run.events, timeline=timeline,
                           expert_load=moe.expert_load if moe is not None else None,
                           rank_load=moe.rank_load if moe is not None else None,
                           max_rank_slots=moe.max_rank_slots if moe is not None else None,
                           stage_end=list(run.stage_end))

    def _replay(self, dur: np.ndarray, hide: np.ndarray | None, *, p2p: bool) -> PipelineRun:
        """``replay`` of durations ``[K, m, C]``, cached (the ideal pipeline rarely changes between steps)."""
        key = (np.ascontiguousarray(dur).tobytes(), b"" if hide is None else np.ascontiguousarray(hide).tobytes(), p2p)
        hit = self._replays.get(key)
        if hit is None:
            if len(self._replays) > 32:
                self._replays.clear()
            hit = self._replays[key] = replay(self.s.plan, dur.ravel().tolist(), self.p2p if p2p else self.zero_p2p,
                                              None if hide is None else hide.ravel().tolist())
        return hit

    def runtime_memory(self, moe_slots: np.ndarray) -> float:
        """Peak bytes per GPU over the stages with the hottest rank's routed load ``[L]``."""
        t = self.s.memory.table(self.s.micro_batch_tokens, moe_slots)
        return float(t["total"].max())

    def _timeline(self, run: PipelineRun, sync_end: np.ndarray, opt_s: float, gather_s: float) -> list[dict[str, Any]]:
        """Rows of every op, each stage's exposed gradient sync and the optimizer phase. ``op``: F, B
        or W (B is the whole backward unless the schedule splits off W; both are kind "backward");
        ``fused``: the op ran in an overlapped F&B slot."""
        plan = self.s.plan
        fused = plan.fused_flat.tolist()
        rows = [{"stage": plan.op_stage[i], "chunk": plan.op_chunk[i], "micro_batch": plan.op_mb[i],
                 "kind": "forward" if plan.op_kind[i] == 0 else "backward", "op": "FBW"[plan.op_kind[i]],
                 "fused": fused[plan.op_slot[i]], "start_s": run.start[i],
                 "end_s": run.end[i]} for i in range(plan.n_ops)]
        end = float(max(np.max(run.stage_end), np.max(sync_end)))
        for st in range(plan.pp):
            if sync_end[st] > run.stage_end[st]:
                rows.append({"stage": st, "chunk": -1, "micro_batch": -1, "kind": "dp_sync", "op": "",
                             "fused": False, "start_s": run.stage_end[st], "end_s": float(sync_end[st])})
            rows.append({"stage": st, "chunk": -1, "micro_batch": -1, "kind": "optimizer", "op": "", "fused": False,
                         "start_s": end, "end_s": end + opt_s + gather_s})
        return rows

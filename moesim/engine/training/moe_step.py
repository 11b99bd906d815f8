"""Routed-expert work of one step: routing dynamics -> per-micro-batch counts -> MoE op costs.

Per step:

1. the router's natural logits (``RouterAffinity``: the scenario's popularity, drift, phases) go
   through the gate policy, which returns the step's mean slot shares and its next state;
2. ``samples_per_step`` routing draws of one EP group's micro-batch (``mesh.group_tokens`` tokens):
   each draw's popularity is Dirichlet-dispersed around the shares when
   ``router.microbatch_concentration`` is set (times the gate's dispersion factor), then counts
   come from the workload's count sampler (rows sum to ``T k``, each ``<= T``); expert choice
   gives exactly equal counts; ``gate.capacity_factor`` drops the overflow;
3. counts -> tokens per EP rank and local expert through the placement in force (contiguous:
   a reshape; otherwise the even split over replicas, or the scenario's balancer);
4. ``moe_layers_cost`` (shared with inference) costs every draw's MoE layers on the EP group of
   each stage: slowest rank's grouped GEMMs plus dispatch + combine all-to-alls (``direct``; with
   ``dispatch.kind: hierarchical`` the all-to-alls come from ``dispatch.EpDispatch``: once per
   host over the network, node-limited routing); the same with perfectly balanced counts gives
   the *imbalance* share;
5. every (micro-batch, chunk) op picks one draw at random; the gate observes the draws' summed
   selections (the global-batch load) and updates its state.

Backward: 2 x the expert GEMMs, the same all-to-all traffic (gradients go back the same way).
``schedule.ep_comm_overlap`` hides that share of the all-to-all behind computation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from moesim.config.training import TrainingCfg
from moesim.engine.moe_layer import MoeShape, gemm_tokens_from_decision, moe_layers_cost, transfer_bytes
from moesim.engine.moe_pool import MoeRuntime
from moesim.engine.training.dispatch import EpDispatch
from moesim.engine.training.layout import ChunkLayout
from moesim.hardware.cost import CostModel
from moesim.network.collectives import CollectiveCost
from moesim.policies.balance import BalancePolicy
from moesim.policies.gate import GATES, GatePolicy, GateRouting, RouterAffinity, capacity_clip, max_violation
from moesim.policies.placement import Placement
from moesim.workload.routing_dynamics import capped_inclusion_rows
from moesim.workload.routing_load import counts_from_inclusion

__all__ = ["MoeStep", "MoeStepModel", "build_gate"]


def build_gate(cfg: TrainingCfg, top_k: int) -> GatePolicy:
    """The gate policy ``cfg.gate.kind`` with its knobs (and the router's scale / restore rate)."""
    g, r = cfg.gate, cfg.router
    kwargs: dict[str, Any] = g.model_dump(exclude={"kind", "capacity_factor"})
    kwargs.update(score_scale=r.score_scale, restore_rate=r.restore_rate, top_k=top_k)
    return GATES.build(g.kind, **kwargs)


@dataclass(frozen=True)
class MoeStep:
    """Routed-expert op components ``[m, C]`` seconds and the step's routing statistics.

    gemm_*: balanced GEMM time; imbalance_*: slowest rank's GEMMs + all-to-all over the balanced
    case (recomputed work's share included); ep_*: exposed all-to-all of the balanced case;
    recompute: balanced MoE work redone in backward.
    expert_load ``[L, E]``: summed draws (pre-drop selections); rank_load ``[L, P]`` after
    placement and dropping; max_rank_slots ``[L]``: (token, slot) pairs of a micro-batch on its most
    loaded rank, averaged over the draws (micro-batches alive together are different draws).
    """

    gemm_f: np.ndarray
    gemm_b: np.ndarray
    imbalance_f: np.ndarray
    imbalance_b: np.ndarray
    ep_f: np.ndarray
    ep_b: np.ndarray
    recompute: np.ndarray
    routing: GateRouting
    expert_load: np.ndarray
    rank_load: np.ndarray
    max_rank_slots: np.ndarray
    maxvio_global: float
    maxvio_micro: float
    rank_imbalance: float
    dropped_fraction: float


class MoeStepModel:
    """Routing dynamics and MoE op costs of the simulated pipeline (module doc).

    Args:
        layout: chunk layout; stage_groups: per stage, the simulated EP group's GPUs.
        shape: ``MoeShape`` template (its ``gpus`` are replaced per stage).
        placement, balancer: the placement in force and the runtime balancer (None: even split).
        affinity, gate: natural router logits and the gate policy.
        group_tokens: tokens of one EP group's micro-batch; top_k; samples: draws per step.
        cfg: the training section; node_of: host of every topology GPU (for the dispatch;
            default: the collectives' topology, else one host).
    """

    def __init__(self, *, layout: ChunkLayout, stage_groups: list[tuple[int, ...]], shape: MoeShape,
                 placement: Placement, balancer: BalancePolicy | None, affinity: RouterAffinity,
                 gate: GatePolicy, cost: CostModel, coll: CollectiveCost, group_tokens: int, top_k: int,
                 samples: int, cfg: TrainingCfg, pp: int, node_of: np.ndarray | None = None) -> None:
        self.lay, self.cost, self.coll = layout, cost, coll
        self.placement, self.balancer = placement, balancer
        self.affinity, self.gate = affinity, gate
        self.tokens, self.k, self.samples, self.cfg = int(group_tokens), int(top_k), int(samples), cfg
        n_layers, n_experts = placement.n_layers, placement.n_experts
        self.state = gate.initial_state(n_layers, n_experts)
        self.contiguous = placement.n_slots == n_experts and np.array_equal(
            placement.phy2log, np.tile(np.arange(n_experts), (n_layers, 1)))
        # only its even split over replicas is used (the routing draws are made here)
        self.runtime = MoeRuntime(routing=None, placement=placement, balancer=None,  # type: ignore[arg-type]
                                  shape=shape, cost=cost,
                                  collectives=coll, samples=samples, contiguous=self.contiguous)
        self.shape = shape
        self.overlap = cfg.schedule.ep_comm_overlap
        self._stage_layers = self._group_stages(stage_groups, pp)
        if node_of is None:
            topo = getattr(coll, "topology", None)
            node_of = np.asarray(topo.node_of) if topo is not None else np.zeros(max(max(g) for g in stage_groups) + 1)
        self._dispatch = [EpDispatch(cfg.dispatch, node_of=node_of, group=sh.gpus, expert_tp=sh.expert_tp,
                                     hidden=sh.hidden, act_bytes=sh.act_bytes, top_k=top_k, n_experts=n_experts)
                          for sh, _ in self._stage_layers]
        self.hierarchical = cfg.dispatch.kind == "hierarchical"
        self.internode_bytes: list[float] = []
        """Per step, dispatch bytes a token sends across hosts (mean over draws and layers)."""
        self.step_offset = 0
        self._balanced_cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def stage_layers(self) -> list[tuple[MoeShape, np.ndarray]]:
        """Per group of stages sharing a network view: (shape on its EP group, MoE layer indices)."""
        return self._stage_layers

    def set_placement(self, placement: Placement) -> None:
        """Put a re-planned placement in force from the next step."""
        self.placement = placement
        self.contiguous = False
        self.runtime.set_placement(placement)

    def _group_stages(self, groups: list[tuple[int, ...]], pp: int) -> list[tuple[MoeShape, np.ndarray]]:
        """(shape on a stage's EP group, MoE layer indices) per group of stages with the same group
        network view (stages whose EP groups look alike share one costing call)."""
        lay = self.lay
        by_key: dict[tuple[Any, ...], list[int]] = {}
        topo = getattr(self.coll, "topology", None)
        for s in range(pp):
            g = np.asarray(groups[s])
            key: tuple[Any, ...]
            if topo is None:
                key = ("any",)
            else:
                ix = (g[:, None], g[None, :])
                key = (np.asarray(topo.bottleneck_bytes_per_s[ix]).tobytes(), np.asarray(topo.latency_s[ix]).tobytes())
            by_key.setdefault(key, []).append(s)
        out = []
        for stages in by_key.values():
            layers = [np.arange(lay.moe_start[c], lay.moe_stop[c]) for c in range(lay.chunks) if c % pp in stages]
            idx = np.concatenate(layers) if layers else np.zeros(0, np.int64)
            if idx.size:
                shape = replace(self.shape, gpus=tuple(groups[stages[0]]))
                out.append((shape, idx))
        return out

    # ------------------------------------------------------------------ draws
    def _counts(self, routing: GateRouting, rng: np.random.Generator) -> np.ndarray:
        """``[S, L, E]`` (token, slot) counts of the step's draws (module doc, step 2)."""
        share, s, t = routing.share, self.samples, self.tokens
        n_layers, n_experts = share.shape
        if routing.exact:
            per_token = routing.experts_per_token or self.k
            total = int(round(t * per_token))
            base, extra = divmod(total, n_experts)
            row = np.full(n_experts, base, np.int64)
            row[:extra] += 1
            return np.broadcast_to(row, (s, n_layers, n_experts)).copy()
        conc = self.cfg.router.microbatch_concentration
        shares = np.broadcast_to(share, (s, n_layers, n_experts))
        if conc is not None and np.isfinite(routing.dispersion):
            alpha = np.maximum(conc * routing.dispersion * n_experts * shares, 1e-3)
            g = rng.gamma(alpha)
            shares = g / g.sum(axis=-1, keepdims=True)
        incl = capped_inclusion_rows(shares.reshape(-1, n_experts), self.k)
        return counts_from_inclusion(incl, t, self.k, rng).reshape(s, n_layers, n_experts)

    def _gemm_tokens(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``[S, L, P, E']`` tokens per EP rank and local GEMM, expert-weight copies and ``[S, L]``
        pairs the balancer dropped (the scenario's ``balance``: LLEP, capacity, replica choice)."""
        s, n_layers, n_experts = kept.shape
        p = self.placement.n_gpus
        if self.balancer is None:
            gemm = kept.reshape(s, n_layers, p, n_experts // p) if self.contiguous else self.runtime.even_split(kept)
            return gemm, None, np.zeros((s, n_layers), np.int64)
        decisions = [self.balancer.balance(kept[i], self.placement) for i in range(s)]
        gemm = np.stack([gemm_tokens_from_decision(d, n_experts) for d in decisions])
        moves = sum(d.weight_transfers for d in decisions)
        pairs = np.stack([transfer_bytes(d, self.shape) for d in decisions]) if moves else None
        return gemm, pairs, np.stack([d.dropped for d in decisions])

    def _layer_costs(self, gemm: np.ndarray, pairs: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """``[S, L]`` slowest-rank GEMMs, all-to-alls (+ weight copies), the balanced versions
        (cached: they depend only on each layer's total load) and the dispatch bytes a token sends
        across hosts."""
        s, n_layers = gemm.shape[:2]
        g_max, comm, inter = np.zeros((s, n_layers)), np.zeros((s, n_layers)), np.zeros((s, n_layers))
        total = gemm.sum(axis=(-1, -2))                                  # [S, L]
        for (shape, idx), disp in zip(self._stage_layers, self._dispatch):
            wp = pairs[:, idx] if pairs is not None else None
            real = moe_layers_cost(gemm[:, idx], shape, self.cost, self.coll, weight_pairs=wp)
            g_max[:, idx] = real.gemm_s.max(axis=-1)
            slots = gemm[:, idx].sum(axis=-1)
            if self.hierarchical:
                traffic = disp.traffic(slots)                             # once for the time and the bytes
                comm[:, idx] = disp.comm_s(self.coll, traffic) + real.transfer_s
                inter[:, idx] = disp.internode_bytes(traffic)
            else:
                comm[:, idx] = real.comm_s + real.transfer_s
                inter[:, idx] = disp.internode_bytes_per_token(slots)
        g_bal, c_bal = self._balanced(total)
        return g_max, comm, g_bal, c_bal, inter

    def _balanced(self, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[S, L]`` GEMM and all-to-all seconds were each layer's ``total`` load spread evenly."""
        key = total.tobytes()
        hit = self._balanced_cache.get(key)
        if hit is not None:
            return hit
        s, n_layers = total.shape
        n_exp, p = self.placement.n_experts, self.placement.n_gpus
        uniq, inv = np.unique(total.ravel(), return_inverse=True)     # few distinct totals (usually one)
        even = np.broadcast_to((uniq / n_exp)[:, None, None, None], (uniq.size, 1, p, n_exp // p))
        g_bal, c_bal = np.zeros((s, n_layers)), np.zeros((s, n_layers))
        for (shape, idx), disp in zip(self._stage_layers, self._dispatch):
            bal = moe_layers_cost(even, shape, self.cost, self.coll)
            a2a = disp.comm_s(self.coll, disp.traffic(even.sum(axis=-1))) if self.hierarchical else bal.comm_s
            g_bal[:, idx] = bal.gemm_s.max(axis=-1)[:, 0][inv].reshape(s, n_layers)[:, idx]
            c_bal[:, idx] = a2a[:, 0][inv].reshape(s, n_layers)[:, idx]
        if len(self._balanced_cache) > 64:
            self._balanced_cache.clear()
        self._balanced_cache[key] = (g_bal, c_bal)
        return g_bal, c_bal

    def _per_op(self, per_layer: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Sum ``[S, L]`` over each chunk's MoE layers -> ``[S, C]``; pick draw ``idx [m, C]`` -> ``[m, C]``."""
        cs = np.concatenate([np.zeros((per_layer.shape[0], 1)), np.cumsum(per_layer, axis=1)], axis=1)
        chunk = cs[:, self.lay.moe_stop] - cs[:, self.lay.moe_start]
        return np.take_along_axis(chunk, idx, axis=0)

    def warm_up(self, steps: int) -> None:
        """Advance the router and gate ``steps`` steps on expected loads (no draws, no costs): the
        simulated steps then start from a router that has trained that long. The router's drift
        is refreshed every ``steps / 256`` steps (exact OU jumps), the gate updates every step."""
        rng = np.random.default_rng(0)
        stride = max(1, steps // 256)
        logits = None
        for k in range(steps):
            if k % stride == 0:
                logits = self.affinity.logits(k)
            routing, state = self.gate.route(self.state, logits, rng=rng)
            self.state = self.gate.observe(state, routing.share)
        self.step_offset = steps

    # ------------------------------------------------------------------ one step
    def step(self, step: int, *, micro_batches: int, rng: np.random.Generator,
             token_scale: np.ndarray | None = None) -> MoeStep:
        """Costs and statistics of step ``step`` (module doc); ``token_scale [m]`` scales a
        micro-batch's routed work when its token count differs from nominal (unpacked data)."""
        logits = self.affinity.logits(step + self.step_offset)
        routing, state = self.gate.route(self.state, logits, rng=rng)
        counts = self._counts(routing, rng)
        kept, dropped = (counts, np.zeros(counts.shape[:2], np.int64)) if routing.exact else \
            capacity_clip(counts, self.cfg.gate.capacity_factor)
        gemm, pairs, balancer_dropped = self._gemm_tokens(kept)
        dropped = dropped + balancer_dropped
        g_max, comm, g_bal, c_bal, inter = self._layer_costs(gemm, pairs)
        slots = gemm.sum(axis=-1)                                        # [S, L, P]
        moe_layers = np.concatenate([idx for _, idx in self._stage_layers])
        self.internode_bytes.append(float(np.mean(inter[:, moe_layers])))
        idx = rng.integers(0, self.samples, size=(micro_batches, self.lay.chunks))
        hide = 1.0 - self.overlap
        per_op = {name: self._per_op(x, idx) for name, x in
                  (("gmax", g_max), ("gbal", g_bal), ("comm", comm), ("cbal", c_bal))}
        if token_scale is not None:
            per_op = {k: v * token_scale[:, None] for k, v in per_op.items()}
        imb_comm = (per_op["comm"] - per_op["cbal"]) * hide
        recompute, recompute_imb = self._recompute(per_op, slots, idx)
        selected = counts.sum(axis=0).astype(np.float64)                 # [L, E] global-batch selections
        share_obs = selected / np.maximum(selected.sum(axis=-1, keepdims=True), 1.0)
        self.state = self.gate.observe(state, share_obs)
        rank_load = slots.sum(axis=0)
        mean_rank = slots.mean(axis=-1)
        return MoeStep(
            gemm_f=per_op["gbal"], gemm_b=2.0 * per_op["gbal"],
            imbalance_f=per_op["gmax"] - per_op["gbal"] + imb_comm,
            imbalance_b=2.0 * (per_op["gmax"] - per_op["gbal"]) + imb_comm + recompute_imb,
            ep_f=per_op["cbal"] * hide, ep_b=per_op["cbal"] * hide, recompute=recompute, routing=routing,
            expert_load=counts.sum(axis=0), rank_load=rank_load, max_rank_slots=slots.max(axis=2).mean(axis=0),
            maxvio_global=float(max_violation(selected).mean()),
            maxvio_micro=float(max_violation(counts).mean()),
            rank_imbalance=float(np.where(mean_rank > 0, slots.max(axis=-1) / np.maximum(mean_rank, 1e-12),
                                          1.0).mean()),
            dropped_fraction=float(dropped.sum() / max(counts.sum(), 1)))

    def _recompute(self, per_op: dict[str, np.ndarray], slots: np.ndarray,
                   idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MoE forward work redone in the backward op (selective ``moe`` / ``moe_act``; ``full``):
        ``(balanced part, imbalance part)``."""
        cfg = self.cfg
        zero = np.zeros_like(per_op["gbal"])
        hide = 1.0 - self.overlap
        gemm_imb = per_op["gmax"] - per_op["gbal"]
        if cfg.recompute == "full":
            return per_op["gbal"] + per_op["cbal"] * hide, gemm_imb + (per_op["comm"] - per_op["cbal"]) * hide
        if cfg.recompute != "selective":
            return zero, zero
        mods = set(cfg.recompute_modules)
        if "moe" in mods:
            return per_op["gbal"], gemm_imb
        if "moe_act" in mods:
            act_bytes = slots.max(axis=-1) * self.shape.intermediate_per_gpu * self.shape.act_bytes * 2.0
            return self._per_op(self.cost.memory_s(act_bytes), idx), zero
        return zero, zero

"""MoETuner-style two-stage ILP placement (POLICIES.md A2), solved by CBC through PuLP.

Stage 1 (per layer, ``_ilp_stage1``): experts, plus up to ``replicas`` extra copies of the hottest
experts, go to ``P`` clusters, minimising sum_k |cluster load - mean| (tokens, even split over
copies), with at most ``S`` copies per cluster and no empty cluster. Stage 2 (``_ilp_stage2``):
clusters map one-to-one onto GPUs per layer, minimising the sum over layer transitions of the
slowest GPU pair's cross-layer traffic / bandwidth, with every GPU's total experts over all layers
balanced (floor/ceil of the mean) and within its HBM.

Clusters may differ in size within a layer (MoETuner's point: a hot expert can sit alone). If
stage 2 cannot then balance the totals, stage 1 is re-solved with sizes pinned to floor/ceil of
the layer mean, which a cyclic mapping always balances; the report notes it.

HBM: ``hbm_free_bytes // expert_bytes`` experts per GPU. Before solving, the policy checks that a
balanced spread of ``L*E`` experts fits (else :class:`InfeasiblePlacement` naming the GPU and its
shortfall in bytes) and trims the replica budget to what fits.

Time: ``time_limit_s`` is the CBC budget: 60 % split evenly over the stage-1 layers, 40 % to
stage 2. A free-size attempt that falls back spends its stage-1 share again (worst case about
1.7x), and every CBC call adds ~0.1-0.3 s of process and file overhead (more when writing the
model for E = 256). Results are reproducible when every solve ends optimal (CBC runs
single-threaded); a solve cut by the time limit returns its incumbent, which depends on machine
speed. Every solve is warm-started from heuristics and never returns worse than they do, so the
stage-1 objective is never worse than contiguous, round-robin or greedy LPT (EPLB with R = E).

Scaling (measured on one core, ``time_limit_s`` T): E = 8, P = 4, L = 32 (Mixtral) with
T = 10 s: 6-8 s, gaps of a few %, GPU imbalance 1.63 against contiguous 2.01. E = 64, P = 8,
L = 4, T = 20 s: ~33 s (free sizes fell back), 10 % gap, equal to greedy LPT, which is already
close. E = 256, P = 32, L = 2, T = 30 s: ~44 s (writing the models adds time), the greedy
incumbent with CBC's weak LP bound (gap ~50 %); the report says so. Above ``max_experts``
(default 256) the policy refuses: use ``eplb``. Stage 2 is exact for small P and
feasibility-only when ``(L-1) P^2 (P-1) > max_stage2_vars``. The stage-1 LP relaxation is weak
(fractional assignments balance perfectly), so gaps overstate the distance from optimal.
"""

from __future__ import annotations

import numpy as np

from moesim.core.errors import ConfigError, InfeasiblePlacement
from moesim.policies.placement._ilp_stage1 import deviation, solve_layer
from moesim.policies.placement._ilp_stage2 import map_clusters, traffic_cost
from moesim.policies.placement.base import (
    PLACEMENTS, Placement, PlacementReport, SolveRecord, check_hbm, check_inputs)

__all__ = ["IlpPlacement"]

_WORST = {"optimal": 0, "feasible": 1, "heuristic": 2}


def _caps(hbm_free_bytes: np.ndarray | None, expert_bytes: float, n_gpus: int,
          slot_cap: int) -> np.ndarray:
    if hbm_free_bytes is None or expert_bytes <= 0:
        return np.full(n_gpus, slot_cap, dtype=np.int64)
    free = np.asarray(hbm_free_bytes, dtype=np.float64)
    if free.shape != (n_gpus,):
        raise ValueError(f"hbm_free_bytes shape {free.shape} != [n_gpus] ({n_gpus},)")
    return np.minimum(np.floor(np.maximum(free, 0.0) / expert_bytes + 1e-9), slot_cap).astype(np.int64)


def _fits(n: int, caps: np.ndarray) -> int | None:
    """None if ``n`` experts spread floor/ceil over the GPUs fit ``caps``, else the sorted
    position (0 = largest cap) of the first GPU that cannot take its share."""
    q, rem = divmod(n, caps.size)
    order = np.sort(caps)[::-1]
    if order[-1] < q:
        return caps.size - 1
    if rem and order[rem - 1] < q + 1:
        return rem - 1
    return None


def _max_total(caps: np.ndarray, lower: int, upper: int, *, expert_bytes: float,
               hbm_free_bytes: np.ndarray | None, shape: tuple[int, int]) -> int:
    bad = _fits(lower, caps)
    if bad is not None:
        q, rem = divmod(lower, caps.size)
        need = q + (1 if bad < rem else 0)
        # the smallest GPU (lowest id on ties) when all must hold q, else the rem-th largest
        g = int(np.argmin(caps)) if bad == caps.size - 1 else int(np.argsort(-caps, kind="stable")[bad])
        free = float(np.asarray(hbm_free_bytes, dtype=np.float64)[g]) if hbm_free_bytes is not None else 0.0
        raise InfeasiblePlacement(
            f"gpu {g}: a balanced ilp placement of {shape[0]} layers x {shape[1]} experts needs "
            f"{need} experts x {expert_bytes:.6g} B = {need * expert_bytes:.6g} B of weights on it "
            f"but only {free:.6g} B of HBM is free; short by {need * expert_bytes - free:.6g} B")
    return next(n for n in range(upper, lower - 1, -1) if _fits(n, caps) is None)


def _cluster_traffic(members: list[np.ndarray], transitions: np.ndarray) -> list[np.ndarray]:
    """Per transition ``float[P, P]`` tokens between clusters (even split over copies)."""
    share = [m / m.sum(axis=1, keepdims=True) for m in members]
    return [share[t].T @ transitions[t] @ share[t + 1] for t in range(len(members) - 1)]


@PLACEMENTS.register("ilp")
class IlpPlacement:
    """Two-stage ILP placement; the result carries a :class:`PlacementReport`.

    Args:
        time_limit_s: total CBC wall-clock budget (see the module docstring for the split).
        replicas: extra copies per layer the ILP may give hot experts (capped by slots, HBM and
            ``P - 1`` per expert); 0 = none.
        rel_gap: relative optimality gap at which CBC may stop (MoETuner used 0.025); 0 = prove.
        cluster_sizes: ``"free"`` (1..S per cluster, MoETuner) or ``"balanced"`` (floor/ceil).
        max_stage2_vars: above this many stage-2 pair variables the traffic term is skipped.
        max_experts: refuse larger ``E`` (the per-layer model grows as ``E * P``).
    """

    def __init__(self, *, time_limit_s: float = 10.0, replicas: int = 0, rel_gap: float = 0.0,
                 cluster_sizes: str = "free", max_stage2_vars: int = 50_000,
                 max_experts: int = 256) -> None:
        if time_limit_s <= 0 or replicas < 0 or not 0 <= rel_gap < 1:
            raise ConfigError(f"time_limit_s={time_limit_s} must be > 0, replicas={replicas} >= 0, "
                              f"rel_gap={rel_gap} in [0, 1)", field="placement")
        if cluster_sizes not in ("free", "balanced"):
            raise ConfigError(f"cluster_sizes={cluster_sizes!r}: use 'free' or 'balanced'",
                              field="placement.cluster_sizes")
        self.time_limit_s = float(time_limit_s)
        self.replicas = int(replicas)
        self.rel_gap = float(rel_gap)
        self.cluster_sizes = cluster_sizes
        self.max_stage2_vars = int(max_stage2_vars)
        self.max_experts = int(max_experts)

    def place(self, load: np.ndarray, *, n_gpus: int, slots_per_gpu: int,
              bandwidth: np.ndarray | None = None, transitions: np.ndarray | None = None,
              hbm_free_bytes: np.ndarray | None = None, expert_bytes: float = 0.0,
              rng: np.random.Generator | None = None) -> Placement:
        """See :class:`~moesim.policies.placement.base.PlacementPolicy`; deterministic (no rng)."""
        arr = check_inputs(load, n_gpus, slots_per_gpu)
        n_layers, n_experts = arr.shape
        if n_experts > self.max_experts:
            raise ConfigError(f"ilp placement is sized for at most {self.max_experts} experts per "
                              f"layer, got {n_experts}; use kind eplb, or raise max_experts and "
                              "time_limit_s", field="placement.max_experts")
        bw = self._bandwidth(bandwidth, n_gpus)
        if transitions is not None:
            transitions = np.asarray(transitions, dtype=np.float64)
            if transitions.shape != (n_layers - 1, n_experts, n_experts):
                raise ValueError(f"transitions shape {transitions.shape} != "
                                 f"[L-1, E, E] {(n_layers - 1, n_experts, n_experts)}")
        caps = _caps(hbm_free_bytes, expert_bytes, n_gpus, n_layers * slots_per_gpu)
        upper = n_layers * min(n_experts + self.replicas, n_gpus * slots_per_gpu)
        n_max = _max_total(caps, n_layers * n_experts, upper, expert_bytes=expert_bytes,
                           hbm_free_bytes=hbm_free_bytes, shape=arr.shape)
        budget = min(self.replicas, (n_max - n_layers * n_experts) // n_layers)
        notes = [] if budget == self.replicas else [
            f"replica budget cut from {self.replicas} to {budget} per layer to fit HBM/slots"]
        history: list[SolveRecord] = []
        # one layer: totals are the cluster sizes, so only balanced sizes can pass stage 2
        free_first = self.cluster_sizes == "free" and n_layers > 1
        for mode in ["free", "balanced"] if free_first else ["balanced"]:
            members, records, worst = self._stage1(arr, n_gpus, slots_per_gpu, budget, mode)
            sizes = np.array([m.sum(axis=0) for m in members], dtype=np.int64)
            traffic = None if transitions is None else _cluster_traffic(members, transitions)
            perm, solves, note = map_clusters(
                sizes, traffic, bw, caps, time_limit_s=0.4 * self.time_limit_s,
                rel_gap=self.rel_gap, max_vars=self.max_stage2_vars)
            notes += [note] if note else []
            for stage, result in solves:
                records.append(SolveRecord(stage, None, result.status, result.objective,
                                           result.bound, result.time_s))
                worst = max(worst, _WORST.get(result.status, 2))
            if perm is not None:
                break
            history += records
            notes.append(f"stage 2 found no balanced mapping for {mode} cluster sizes; "
                         "re-solved stage 1 with balanced sizes")
        assert perm is not None, "balanced cluster sizes always admit the cyclic mapping"
        phy2log = self._phy2log(members, perm, slots_per_gpu)
        objective = sum(deviation(m, arr[l]) for l, m in enumerate(members))
        bounds = [r.bound for r in records if r.stage == "cluster"]
        known = [b for b in bounds if b is not None]
        bound = float(sum(known)) if len(known) == len(bounds) else None
        gap = None
        if bound is not None:
            gap = max(0.0, (objective - bound) / objective) if objective > 1e-12 else 0.0
        report = PlacementReport(
            status=[k for k, v in _WORST.items() if v == worst][0], objective=objective,
            bound=bound, gap=gap,
            traffic_objective=None if traffic is None else traffic_cost(perm, traffic, bw),
            traffic_bound=next((r.bound for r in records if r.stage == "map"), None),
            solves=tuple(history + records), notes=tuple(notes))
        placement = Placement.from_phy2log(phy2log, n_experts=n_experts, n_gpus=n_gpus,
                                           report=report)
        check_hbm(placement, expert_bytes=expert_bytes, hbm_free_bytes=hbm_free_bytes, policy="ilp")
        return placement

    def _stage1(self, load: np.ndarray, n_gpus: int, cap: int, budget: int,
                mode: str) -> tuple[list[np.ndarray], list[SolveRecord], int]:
        members, records, worst = [], [], 0
        per_layer = 0.6 * self.time_limit_s / load.shape[0]
        for l in range(load.shape[0]):
            member, result, used = solve_layer(load[l], n_clusters=n_gpus, cap=cap, budget=budget,
                                               balanced=mode == "balanced",
                                               time_limit_s=per_layer, rel_gap=self.rel_gap)
            members.append(member)
            status = result.status if used or result.status == "optimal" else "heuristic"
            worst = max(worst, _WORST.get(status, 2))
            objective = deviation(member, load[l])
            bound = result.bound if result.status in ("optimal", "feasible") else None
            bound = None if bound is None else min(bound, objective)   # CBC rounds its tolerance
            records.append(SolveRecord("cluster", l, status, objective, bound, result.time_s))
        return members, records, worst

    @staticmethod
    def _phy2log(members: list[np.ndarray], perm: np.ndarray, per_gpu: int) -> np.ndarray:
        n_gpus = perm.shape[1]
        phy2log = np.full((len(members), n_gpus * per_gpu), -1, dtype=np.int64)
        for l, member in enumerate(members):
            for k in range(n_gpus):
                experts = np.nonzero(member[:, k])[0]
                g = int(perm[l, k])
                phy2log[l, g * per_gpu: g * per_gpu + experts.size] = experts
        return phy2log

    @staticmethod
    def _bandwidth(bandwidth: np.ndarray | None, n_gpus: int) -> np.ndarray:
        if bandwidth is None:
            return np.ones((n_gpus, n_gpus))
        bw = np.asarray(bandwidth, dtype=np.float64)
        off = ~np.eye(n_gpus, dtype=bool)
        if bw.shape != (n_gpus, n_gpus) or not (bw[off] > 0).all():
            raise ValueError(f"bandwidth must be [P, P] = {(n_gpus, n_gpus)} with positive "
                             f"off-diagonal bytes/s, got shape {bw.shape}")
        return bw
